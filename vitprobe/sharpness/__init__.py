"""Sharpness of a trained model's minimum: Hessian eigenvalues, trace and density; SAM and Keskar
sharpness.

Everything measures the mean loss over a fixed set of images with the model in eval mode; the
Hessian is a linear operator (:class:`HessianOperator`) that the solvers consume.
"""

from vitprobe.sharpness.density import hessian_density
from vitprobe.sharpness.keskar import keskar_sharpness
from vitprobe.sharpness.operator import HessianOperator
from vitprobe.sharpness.results import (DensityResult, KeskarResult, SamResult, SpectrumResult,
                                        TraceResult)
from vitprobe.sharpness.sam import sam_sharpness
from vitprobe.sharpness.spectrum import hessian_spectrum
from vitprobe.sharpness.subsets import SubsetsResult, sharpness_subsets
from vitprobe.sharpness.trace import hessian_trace

__all__ = ["HessianOperator", "hessian_spectrum", "hessian_trace", "hessian_density", "sam_sharpness",
           "keskar_sharpness", "SpectrumResult", "TraceResult", "DensityResult", "SamResult",
           "KeskarResult", "sharpness_subsets", "SubsetsResult"]
