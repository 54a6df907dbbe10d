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
from typing import Literal

import numpy as np
import torch
from torch import nn

from vitprobe.data.batches import DataLike
from vitprobe.errors import UserError
from vitprobe.models.loaded import LoadedModel, as_loaded
from vitprobe.sharpness.loss import LossFn
from vitprobe.sharpness.operator import HessianOperator, KeepGraphs
from vitprobe.sharpness.results import TraceResult
from vitprobe.sharpness.spectrum import describe, operator_for
from vitprobe.sharpness.vectors import ParamFilter, dot, rademacher

TraceMethod = Literal["hutch++", "hutchinson"]


def hutchinson(op: HessianOperator, num_samples: int, generator: torch.Generator,
               project=lambda z: z) -> np.ndarray:
    """Samples z^T P H P z for Rademacher z (P = ``project``, the identity by default)."""
    samples = []
    for _ in range(num_samples):
        z = project(rademacher(op.size, generator, op.dtype, op.device))
        samples.append(dot(z, op.matvec(z)))
    return np.array(samples)


def hutch_plus_plus(op: HessianOperator, num_samples: int,
                    generator: torch.Generator) -> tuple[float, np.ndarray]:
    """tr(Q^T H Q) and the Hutchinson samples of the deflated remainder (Meyer et al. 2021)."""
    sketch = max(1, num_samples // 3)
    remainder = num_samples - 2 * sketch
    products = torch.empty(op.size, sketch, dtype=op.dtype, device=op.device)
    for i in range(sketch):
        products[:, i] = op.matvec(rademacher(op.size, generator, op.dtype, op.device))
    q, _ = torch.linalg.qr(products)  # Householder QR in the parameters' dtype: orthogonal to
    del products                      # its precision, and no float64 copy of the n x m sketch
    exact = sum(dot(q[:, i], op.matvec(q[:, i].contiguous())) for i in range(sketch))
    project = lambda z: z - q @ (q.T @ z)
    return exact, hutchinson(op, remainder, generator, project)


def hessian_trace(model: nn.Module | LoadedModel, data: DataLike | None = None,
                  method: TraceMethod = "hutch++", num_samples: int = 60, params: ParamFilter = None,
                  loss_fn: LossFn | None = None, keep_graphs: KeepGraphs = "auto", seed: int = 0,
                  operator: HessianOperator | None = None) -> TraceResult:
    """tr(H) of the mean loss, from ``num_samples`` Hessian-vector products.

    ``method="hutch++"`` (default; at least 3 products) or ``"hutchinson"`` (at least 2). The
    standard error is the sample standard deviation of the Hutchinson terms over sqrt(count).
    """
    if method not in ("hutch++", "hutchinson"):
        raise UserError(f"unknown trace method {method!r}: choose hutch++ or hutchinson")
    least = 3 if method == "hutch++" else 2
    if num_samples < least:
        raise UserError(f"{method} needs at least {least} samples, got {num_samples}")
    loaded = as_loaded(operator.loaded if operator is not None else model)
    started = time.perf_counter()
    op = operator_for(loaded, data, operator, loss_fn, params, keep_graphs)
    before = op.hvps
    generator = torch.Generator().manual_seed(seed)
    if method == "hutchinson":
        exact, samples = 0.0, hutchinson(op, num_samples, generator)
    else:
        exact, samples = hutch_plus_plus(op, num_samples, generator)
    estimate = exact + (float(samples.mean()) if len(samples) else 0.0)
    std_error = float(samples.std(ddof=1) / math.sqrt(len(samples))) if len(samples) > 1 else float("nan")
    return TraceResult(
        model=loaded.label, seconds=time.perf_counter() - started, num_images=op.num_images,
        num_params=op.size, params=describe(params), method=method, trace=estimate,
        std_error=std_error, samples=samples, hvps=op.hvps - before)
