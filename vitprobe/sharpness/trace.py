"""``hessian_trace``: Hutchinson and Hutch++ estimates of tr(H) with a standard error.

Hutchinson (1989): tr(H) = E[z^T H z] for Rademacher z. Hutch++ (Meyer, Musco, Musco & Woodruff
2021, Algorithm 1) spends a third of the products on a sketch Q = orth(H S) of the top subspace,
takes tr(Q^T H Q) exactly (a third), and runs Hutchinson on the deflated (I - QQ^T) H (I - QQ^T)
with the last third: its error falls as 1/m instead of 1/sqrt(m) when a few eigenvalues dominate,
which is the case for trained networks.

The standard error and the Student-t interval are those of the Hutchinson part, conditional on the
sketch Q, and that is the honest interval: given Q, tr(Q^T H Q) is a constant and the deflated
Hutchinson term is an unbiased estimate of the rest of the trace, so the interval covers tr(H)
at its nominal rate for every Q, hence over Q as well; the sketch's own randomness changes the
width, not the coverage. ``tests/test_sharpness_trace.py`` measures the coverage over seeds.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from vitprobe.data.batches import DataLike
from vitprobe.errors import UserError
from vitprobe.models.loaded import LoadedModel
from vitprobe.result import analysis
from vitprobe.sharpness.lanczos import SymmetricOperator
from vitprobe.sharpness.loss import LossFn
from vitprobe.sharpness.operator import HessianOperator, KeepGraphs
from vitprobe.sharpness.results import TraceResult
from vitprobe.sharpness.vectors import ParamFilter, dot, rademacher

TraceMethod = Literal["hutch++", "hutchinson"]
TRACE_METHODS = ("hutch++", "hutchinson")


@dataclass
class TraceEstimate:
    """tr(A) = ``exact`` (the sketch's part, Hutch++) + the mean of the Hutchinson ``samples``."""

    trace: float
    std_error: float
    samples: np.ndarray
    hvps: int


def hutchinson(op: SymmetricOperator, num_probes: int, generator: torch.Generator,
               project=lambda z: z) -> np.ndarray:
    """Samples z^T P A P z for Rademacher z (P = ``project``, the identity by default)."""
    size, samples = op.shape[0], []
    for _ in range(num_probes):
        z = project(rademacher(size, generator, op.dtype, op.device))
        samples.append(dot(z, op @ z))
    return np.array(samples)


def hutch_plus_plus(op: SymmetricOperator, num_probes: int,
                    generator: torch.Generator) -> tuple[float, np.ndarray]:
    """tr(Q^T A Q) and the Hutchinson samples of the deflated remainder (Meyer et al. 2021)."""
    size = op.shape[0]
    sketch = max(1, num_probes // 3)
    remainder = num_probes - 2 * sketch
    products = torch.empty(size, sketch, dtype=op.dtype, device=op.device)
    for i in range(sketch):
        products[:, i] = op @ rademacher(size, generator, op.dtype, op.device)
    q, _ = torch.linalg.qr(products)  # Householder QR in the operator's dtype: orthogonal to
    del products                      # its precision, and no float64 copy of the n x m sketch
    exact = sum(dot(q[:, i], op @ q[:, i].contiguous()) for i in range(sketch))
    project = lambda z: z - q @ (q.T @ z)
    return exact, hutchinson(op, remainder, generator, project)


def trace_estimate(operator: SymmetricOperator, *, method: TraceMethod = "hutch++", num_probes: int = 60,
                   seed: int = 0) -> TraceEstimate:
    """tr(A) of any symmetric operator from ``num_probes`` products, with the standard error of the
    Hutchinson terms (their sample standard deviation over sqrt(count)).

    ``method="hutch++"`` (default; at least 3 products) or ``"hutchinson"`` (at least 2).
    """
    if method not in TRACE_METHODS:
        raise UserError(f"unknown trace method {method!r}: choose hutch++ or hutchinson")
    least = 3 if method == "hutch++" else 2
    if num_probes < least:
        raise UserError(f"{method} needs at least {least} probes, got {num_probes}")
    generator = torch.Generator().manual_seed(seed)
    if method == "hutchinson":
        exact, samples = 0.0, hutchinson(operator, num_probes, generator)
    else:
        exact, samples = hutch_plus_plus(operator, num_probes, generator)
    estimate = exact + (float(samples.mean()) if len(samples) else 0.0)
    std_error = float(samples.std(ddof=1) / math.sqrt(len(samples))) if len(samples) > 1 else float("nan")
    return TraceEstimate(estimate, std_error, samples, num_probes)


@analysis
def hessian_trace(model: nn.Module | LoadedModel, data: DataLike, *, method: TraceMethod = "hutch++",
                  num_probes: int = 60, params: ParamFilter = None, loss_fn: LossFn | None = None,
                  keep_graphs: KeepGraphs = "auto", seed: int = 0) -> TraceResult:
    """tr(H) of the mean loss: :func:`trace_estimate` on a :class:`HessianOperator`."""
    operator = HessianOperator(model, data, loss_fn=loss_fn, params=params, keep_graphs=keep_graphs)
    return trace_of(operator, method=method, num_probes=num_probes, seed=seed)


def trace_of(operator: HessianOperator, *, method: TraceMethod = "hutch++", num_probes: int = 60,
             seed: int = 0) -> TraceResult:
    """:func:`hessian_trace` on an existing operator (whose kept graphs are reused)."""
    started = time.perf_counter()
    estimate = trace_estimate(operator, method=method, num_probes=num_probes, seed=seed)
    return TraceResult(
        model=operator.loaded.label, seconds=time.perf_counter() - started, images=operator.num_images,
        options={"method": method, "num_probes": num_probes, "seed": seed, "params": operator.params_label},
        parameters=operator.size, params=operator.params_label, method=method, trace=estimate.trace,
        std_error=estimate.std_error, samples=estimate.samples, hvps=estimate.hvps)
