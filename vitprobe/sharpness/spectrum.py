"""``hessian_spectrum``: the top-k Hessian eigenvalues (and eigenvectors) of a model's loss."""

from __future__ import annotations

import math
import time
from typing import Literal

import numpy as np
import torch
from torch import nn

from vitprobe import distributed
from vitprobe.data.batches import DataLike
from vitprobe.models.loaded import LoadedModel, as_loaded
from vitprobe.sharpness.lanczos import lanczos_top
from vitprobe.sharpness.loss import LossFn
from vitprobe.sharpness.operator import HessianOperator, KeepGraphs
from vitprobe.sharpness.power import power_top
from vitprobe.sharpness.pyhessian_peer import PyHessianRun
from vitprobe.sharpness.results import SpectrumResult
from vitprobe.sharpness.vectors import ParamFilter, flatten
from vitprobe.errors import UserError

Method = Literal["lanczos", "power", "pyhessian"]
METHODS = ("lanczos", "power", "pyhessian")


def operator_for(model: nn.Module | LoadedModel, data: DataLike | None, operator: HessianOperator | None,
                 loss_fn: LossFn | None, params: ParamFilter, keep_graphs: KeepGraphs) -> HessianOperator:
    """``operator`` if given (its kept graphs are reused), else a new one on ``model`` and ``data``."""
    if operator is not None:
        return operator
    if data is None:
        raise ValueError("pass data (or an existing HessianOperator as operator=)")
    return HessianOperator(model, data, loss_fn=loss_fn, params=params, keep_graphs=keep_graphs)


def describe(params: ParamFilter) -> str:
    return "all" if params is None else params if isinstance(params, str) else getattr(
        params, "__name__", "custom")


def hessian_spectrum(model: nn.Module | LoadedModel, data: DataLike | None = None, k: int = 1,
                     tol: float = 1e-3, method: Method = "lanczos", max_iter: int = 100,
                     params: ParamFilter = None, loss_fn: LossFn | None = None,
                     keep_graphs: KeepGraphs = "auto", seed: int = 0,
                     operator: HessianOperator | None = None, basis: str = "auto") -> SpectrumResult:
    """The k largest eigenvalues of the Hessian of the mean loss, with eigenvectors.

    ``method``: ``"lanczos"`` (default; full reorthogonalisation, stops when every wanted Ritz pair
    has ||H y - theta y|| / |theta| < tol; ``max_iter`` products in all), ``"power"`` (power
    iteration with deflation, the largest-*magnitude* eigenvalues; ``max_iter`` per eigenvalue), or
    ``"pyhessian"`` (PyHessian's own ``hessian.eigenvalues``, stopping on a relative change below
    tol; residuals are then measured with k extra products that are not counted in ``hvps``).
    ``params`` restricts the Hessian to a block: a regular expression on parameter names or a
    callable ``(name, parameter) -> bool``. ``basis`` places Lanczos's vectors: "device", "host", or
    "auto" (the host when they would not fit on the GPU). Under ``torchrun`` each rank takes a shard
    of the batches and the products are all-reduced, so every rank gets the single-process answer.
    ``choices`` in the result records how products and basis were kept.
    """
    if method not in METHODS:
        raise UserError(f"unknown method {method!r}: choose one of {', '.join(METHODS)}")
    if k < 1 or not (math.isfinite(tol) and tol > 0) or max_iter < 1:
        raise UserError(f"need k >= 1, tol > 0 and max_iter >= 1 (got k={k}, tol={tol}, max_iter={max_iter})")
    loaded = as_loaded(operator.loaded if operator is not None else model)
    started = time.perf_counter()
    op = operator_for(loaded, data, operator, loss_fn, params, keep_graphs)
    if k > op.size:
        raise UserError(f"k={k} is more than the {op.size} parameters in the Hessian")
    if method == "pyhessian":
        if distributed.is_distributed():
            raise UserError("--method pyhessian runs in one process: PyHessian has no torchrun support")
        return _pyhessian_spectrum(loaded, op, k, tol, max_iter, seed, describe(params))
    before = op.hvps
    if method == "lanczos":
        pairs = lanczos_top(op.matvec, op.size, k, tol, max_iter, op.dtype, op.device, seed=seed, basis=basis)
    else:
        pairs = power_top(op.matvec, op.size, k, tol, max_iter, op.dtype, op.device, seed=seed)
    return SpectrumResult(
        model=loaded.label, seconds=time.perf_counter() - started, num_images=op.num_images,
        num_params=op.size, params=describe(params), method=method, eigenvalues=pairs.values,
        residuals=pairs.residuals, hvps=pairs.hvps, total_hvps=op.hvps - before, tol=tol,
        converged=pairs.converged, loss=op.loss, param_names=list(op.param_names),
        eigenvectors=[op.split(v) for v in pairs.vectors], choices={**op.choices, **pairs.choices})


def _pyhessian_spectrum(loaded: LoadedModel, op: HessianOperator, k: int, tol: float, max_iter: int,
                        seed: int, params: str) -> SpectrumResult:
    started = time.perf_counter()
    peer = PyHessianRun(op.module, op.batches, op.loss_fn, op.params, seed=seed)
    values, vectors = peer.eigenvalues(k, tol, max_iter)
    seconds = time.perf_counter() - started
    flat = [flatten(v).to(op.dtype) for v in vectors]
    residuals = np.array([float(torch.linalg.vector_norm(op.matvec(y) - theta * y)) / max(abs(theta), 1e-300)
                          for theta, y in zip(values, flat)])
    return SpectrumResult(
        model=loaded.label, seconds=seconds, num_images=op.num_images, num_params=op.size,
        params=params, method="pyhessian", eigenvalues=np.array(values), residuals=residuals,
        hvps=np.full(k, peer.hvps), total_hvps=peer.hvps, tol=tol,
        converged=bool((residuals < tol).all()), loss=op.loss,
        param_names=list(op.param_names), eigenvectors=[op.split(v) for v in flat])
