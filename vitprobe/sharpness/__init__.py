"""Sharpness of a trained model's minimum: Hessian eigenvalues, trace and density; SAM and Keskar
sharpness; adaptive sharpness; lambda_1 tracked during training.

Everything measures the mean loss over a fixed set of images with the model in eval mode. The
Hessian is a linear operator (:class:`HessianOperator`); the solvers (:func:`eigenpairs`,
:func:`trace_estimate`, :func:`spectral_density`) take any symmetric operator, and the
``hessian_*`` analyses are thin wrappers that build the operator from a model and data.
"""

from vitprobe.sharpness.adaptive import adaptive_sharpness
from vitprobe.sharpness.blocks import BlockSpectrumResult, block_spectrum
from vitprobe.sharpness.density import DensityEstimate, hessian_density, spectral_density
from vitprobe.sharpness.keskar import keskar_sharpness
from vitprobe.sharpness.lanczos import Eigenpairs, SymmetricOperator
from vitprobe.sharpness.operator import HessianOperator
from vitprobe.sharpness.results import (
    AdaptiveSharpnessResult,
    DensityResult,
    KeskarResult,
    SamResult,
    SpectrumResult,
    TraceResult,
)
from vitprobe.sharpness.sam import sam_sharpness
from vitprobe.sharpness.spectrum import eigenpairs, hessian_spectrum
from vitprobe.sharpness.subsets import SubsetsResult, sharpness_subsets
from vitprobe.sharpness.trace import TraceEstimate, hessian_trace, trace_estimate
from vitprobe.sharpness.tracker import SharpnessTracker, TrackResult

__all__ = ["SharpnessTracker", "TrackResult", "adaptive_sharpness", "AdaptiveSharpnessResult", "BlockSpectrumResult", "block_spectrum", "HessianOperator", "SymmetricOperator", "eigenpairs", "trace_estimate", "spectral_density",
           "Eigenpairs", "TraceEstimate", "DensityEstimate", "hessian_spectrum", "hessian_trace",
           "hessian_density", "sam_sharpness", "keskar_sharpness", "SpectrumResult", "TraceResult",
           "DensityResult", "SamResult", "KeskarResult", "sharpness_subsets", "SubsetsResult"]
