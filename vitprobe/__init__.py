"""vitprobe: diagnostics for trained vision models (ViTs and ResNets above all).

Public API: ``load_model``, ``load_data`` and one function per analysis, each called as
``analysis(model, data, *, options...) -> XResult``: ``model`` a :class:`LoadedModel` or a plain
``torch.nn.Module``, ``data`` an iterable of ``(images, labels)``, one such tuple or a tensor.
The solvers (``eigenpairs``, ``trace_estimate``, ``spectral_density``) take any symmetric
operator. ``SharpnessTracker`` follows lambda_1 while a model trains. Names are imported on
first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.3.1"  # the one place it is written: pyproject.toml reads it; CHANGELOG.md

_EXPORTS = {
    "load_model": "vitprobe.models",
    "LoadedModel": "vitprobe.models",
    "as_loaded": "vitprobe.models",
    "InputOverrides": "vitprobe.models",
    "load_data": "vitprobe.data",
    "Batches": "vitprobe.data",
    "UserError": "vitprobe.errors",
    "HessianOperator": "vitprobe.sharpness",
    "eigenpairs": "vitprobe.sharpness",
    "trace_estimate": "vitprobe.sharpness",
    "spectral_density": "vitprobe.sharpness",
    "hessian_spectrum": "vitprobe.sharpness",
    "hessian_trace": "vitprobe.sharpness",
    "hessian_density": "vitprobe.sharpness",
    "sam_sharpness": "vitprobe.sharpness",
    "adaptive_sharpness": "vitprobe.sharpness",
    "keskar_sharpness": "vitprobe.sharpness",
    "sharpness_subsets": "vitprobe.sharpness",
    "block_spectrum": "vitprobe.sharpness",
    "SharpnessTracker": "vitprobe.sharpness",
    "attention_maps": "vitprobe.attention",
    "attention_rollout": "vitprobe.attention",
    "gradient_rollout": "vitprobe.attention",
    "mean_attention_distance": "vitprobe.attention",
    "attributions": "vitprobe.attention",
    "map_quality": "vitprobe.attention",
    "effective_receptive_field": "vitprobe.receptive_field",
    "theoretical_receptive_field": "vitprobe.receptive_field",
    "loss_landscape": "vitprobe.landscape",
    "layer_similarity": "vitprobe.features",
    "feature_frequency": "vitprobe.features",
    "evaluate": "vitprobe.evaluation",
    "corruption_accuracy": "vitprobe.robustness",
    "measure_throughput": "vitprobe.throughput",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'vitprobe' has no attribute {name!r}")
