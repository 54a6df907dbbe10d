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
from vitprobe.errors import UserError
from vitprobe.models.loaded import LoadedModel
from vitprobe.result import analysis
from vitprobe.sharpness.lanczos import Eigenpairs, SymmetricOperator, lanczos_top
from vitprobe.sharpness.loss import LossFn
from vitprobe.sharpness.operator import HessianOperator, KeepGraphs
from vitprobe.sharpness.power import power_top
from vitprobe.sharpness.pyhessian_peer import PyHessianRun
from vitprobe.sharpness.results import SpectrumResult
from vitprobe.sharpness.vectors import ParamFilter, flatten

Method = Literal["lanczos", "power", "pyhessian"]
METHODS = ("lanczos", "power", "pyhessian")
OPERATOR_METHODS = ("lanczos", "power")


def eigenpairs(operator: SymmetricOperator, *, k: int = 1, tol: float = 1e-3, method: str = "lanczos",
               max_iter: int = 100, seed: int = 0, basis: str = "auto",
               start: torch.Tensor | None = None, min_steps: int = 1) -> Eigenpairs:
    """The k largest eigenpairs of any symmetric operator (``shape``, ``dtype``, ``device``, ``@``:
    a :class:`HessianOperator`, a curvlinops GGN or Fisher operator, ...).

    ``method``: ``"lanczos"`` (partial reorthogonalisation, stops when every wanted Ritz pair has
    ||A y - theta y|| / |theta| < tol, as ARPACK does: each value is then that close to *an*
    eigenvalue, in a cluster possibly the next one, see :func:`vitprobe.sharpness.lanczos.lanczos_top`;
    ``max_iter`` products in all) or ``"power"`` (power iteration with deflation: the
    largest-*magnitude* eigenvalues; ``max_iter`` per eigenvalue).
    ``basis`` places Lanczos's vectors: "device", "host", or "auto" (the host when they would not
    fit on the GPU). ``start`` (Lanczos only): the first vector, e.g. the eigenvector of the
    previous check of a slowly changing Hessian (:class:`SharpnessTracker` warm-starts so);
    ``min_steps``: products to take before the stopping test may end the run (a warm start can
    otherwise stop on a lower eigenvalue whose eigenvector it mostly holds).
    """
    if method not in OPERATOR_METHODS:
        raise UserError(f"unknown method {method!r}: choose one of {', '.join(OPERATOR_METHODS)}")
    if k < 1 or not (math.isfinite(tol) and tol > 0) or max_iter < 1:
        raise UserError(f"need k >= 1, tol > 0 and max_iter >= 1 (got k={k}, tol={tol}, max_iter={max_iter})")
    if k > operator.shape[0]:
        raise UserError(f"k={k} is more than the {operator.shape[0]} rows of the operator")
    if method == "lanczos":
        return lanczos_top(operator, k, tol, max_iter, seed=seed, basis=basis, start=start, min_steps=min_steps)
    if start is not None:
        raise UserError("a start vector is for Lanczos; power iteration starts from a random vector")
    return power_top(operator, k, tol, max_iter, seed=seed)


@analysis
def hessian_spectrum(model: nn.Module | LoadedModel, data: DataLike, *, k: int = 1, tol: float = 1e-3,
                     method: Method = "lanczos", max_iter: int = 100, params: ParamFilter = None,
                     loss_fn: LossFn | None = None, keep_graphs: KeepGraphs = "auto", seed: int = 0,
                     basis: str = "auto") -> SpectrumResult:
    """The k largest eigenvalues of the Hessian of the mean loss, with eigenvectors: :func:`eigenpairs`
    on a :class:`HessianOperator`.

    ``method``: ``"lanczos"`` (default), ``"power"`` (see :func:`eigenpairs`), or ``"pyhessian"``
    (PyHessian's own ``hessian.eigenvalues``, stopping on a relative change below tol; residuals
    are then measured with k extra products that are not counted in ``hvps``). ``params``
    restricts the Hessian to a block: a regular expression on parameter names or a callable
    ``(name, parameter) -> bool``. Under ``torchrun`` each rank takes a shard of the batches and the
    products are all-reduced, so every rank gets the single-process answer. ``choices`` in the
    result records how products and basis were kept.
    """
    operator = HessianOperator(model, data, loss_fn=loss_fn, params=params, keep_graphs=keep_graphs)
    return spectrum_of(operator, k=k, tol=tol, method=method, max_iter=max_iter, seed=seed, basis=basis)


def spectrum_of(operator: HessianOperator, *, k: int = 1, tol: float = 1e-3, method: Method = "lanczos",
                max_iter: int = 100, seed: int = 0, basis: str = "auto") -> SpectrumResult:
    """:func:`hessian_spectrum` on an existing operator (whose kept graphs are reused)."""
    if method not in METHODS:
        raise UserError(f"unknown method {method!r}: choose one of {', '.join(METHODS)}")
    started = time.perf_counter()
    options = {"k": k, "tol": tol, "method": method, "max_iter": max_iter, "seed": seed,
               "params": operator.params_label}
    if method == "pyhessian":
        if distributed.is_distributed():
            raise UserError("method pyhessian runs in one process: PyHessian has no torchrun support")
        return _pyhessian_spectrum(operator, k, tol, max_iter, seed, options)
    pairs = eigenpairs(operator, k=k, tol=tol, method=method, max_iter=max_iter, seed=seed, basis=basis)
    return SpectrumResult(
        model=operator.loaded.label, seconds=time.perf_counter() - started, images=operator.num_images,
        options=options, parameters=operator.size, params=operator.params_label, method=method,
        eigenvalues=pairs.values, residuals=pairs.residuals, hvps=pairs.hvps, total_hvps=pairs.total_hvps,
        tol=tol, converged=pairs.converged, loss=operator.loss, param_names=list(operator.param_names),
        eigenvectors=[operator.split(v) for v in pairs.vectors], choices={**operator.choices, **pairs.choices})


def _pyhessian_spectrum(op: HessianOperator, k: int, tol: float, max_iter: int, seed: int,
                        options: dict) -> SpectrumResult:
    started = time.perf_counter()
    peer = PyHessianRun(op.module, op.batches, op.loss_fn, op.params, seed=seed)
    values, vectors = peer.eigenvalues(k, tol, max_iter)
    seconds = time.perf_counter() - started
    flat = [flatten(v).to(op.dtype) for v in vectors]
    residuals = np.array([float(torch.linalg.vector_norm(op.matvec(y) - theta * y)) / max(abs(theta), 1e-300)
                          for theta, y in zip(values, flat)])
    return SpectrumResult(
        model=op.loaded.label, seconds=seconds, images=op.num_images, options=options,
        parameters=op.size, params=op.params_label, method="pyhessian", eigenvalues=np.array(values),
        residuals=residuals, hvps=np.full(k, peer.hvps), total_hvps=peer.hvps, tol=tol,
        converged=bool((residuals < tol).all()), loss=op.loss,
        param_names=list(op.param_names), eigenvectors=[op.split(v) for v in flat])
