"""``hessian_density``: the eigenvalue density by stochastic Lanczos quadrature.

Ghorbani, Krishnan & Xiao (2019), after Golub & Meurant and Lin, Saad & Yang (2016): for each of
``num_vectors`` random unit vectors v, ``steps`` Lanczos steps give T = V^T H V; its eigenvalues are
Gauss quadrature nodes and the squared first components of its eigenvectors their weights, so
v^T f(H) v ~ sum_i w_i f(theta_i). Averaged over v and smoothed with a Gaussian kernel this is the
spectral density. Without reorthogonalisation only two Lanczos vectors are kept (memory of two
vectors instead of ``steps``): spurious copies of converged Ritz values appear, but the quadrature
stays accurate (Knizhnerman 1996; Ghorbani et al. 2019, section 3).
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from vitprobe.data.batches import DataLike
from vitprobe.errors import UserError
from vitprobe.models.loaded import LoadedModel, as_loaded
from vitprobe.sharpness.lanczos import Lanczos
from vitprobe.sharpness.loss import LossFn
from vitprobe.sharpness.operator import HessianOperator, KeepGraphs
from vitprobe.sharpness.results import DensityResult
from vitprobe.sharpness.spectrum import describe, operator_for
from vitprobe.sharpness.vectors import ParamFilter, rademacher


def quadrature(op: HessianOperator, steps: int, generator: torch.Generator,
               reorthogonalise: bool) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights (summing to 1) of one Lanczos run from a Rademacher vector."""
    run = Lanczos(op.matvec, rademacher(op.size, generator, op.dtype, op.device),
                  reorthogonalise=reorthogonalise, generator=generator)
    while run.steps < steps and not run.exhausted:
        run.step()
    theta, s = run.ritz()
    weights = s[0] ** 2
    return theta, weights / weights.sum()


def pyhessian_sigma(nodes: np.ndarray) -> float:
    """PyHessian's default kernel width for SLQ nodes (runs, steps; NaN where a run is shorter):
    variance 1e-5 max(1, lambda_max - lambda_min), with lambda_max / lambda_min the runs' mean
    largest / smallest node widened by 0.01 (``density_generate`` in PyHessian's
    ``density_plot.py``: ``sigma_squared=1e-5``, ``overhead=0.01``)."""
    high = float(np.nanmean(np.nanmax(nodes, axis=1))) + 0.01
    low = float(np.nanmean(np.nanmin(nodes, axis=1))) - 0.01
    return float(np.sqrt(1e-5 * max(1.0, high - low)))


def smooth(nodes: np.ndarray, weights: np.ndarray, sigma: float | None = None,
           grid_points: int = 1000) -> tuple[np.ndarray, np.ndarray, float]:
    """A Gaussian-smoothed density on a grid reaching 5 sigma beyond the extreme nodes.

    ``nodes`` and ``weights`` are (runs, steps), NaN nodes ignored. ``sigma`` (the kernel's
    standard deviation) defaults to PyHessian's (:func:`pyhessian_sigma`), so that density
    figures compare with PyHessian's; the grid is fine enough (at most sigma / 5 apart) that the
    density integrates to 1. Where this departs from PyHessian: the density is normalised
    analytically over the whole line, not by its sum over a grid clipped at the extreme nodes.
    """
    valid = ~np.isnan(nodes)
    if sigma is None:
        sigma = pyhessian_sigma(nodes)
    nodes, weights = nodes[valid], weights[valid]
    low, high = float(nodes.min()), float(nodes.max())
    span = high - low + 10 * sigma
    points = max(grid_points, int(np.ceil(5 * span / sigma)) + 1)
    grid = np.linspace(low - 5 * sigma, high + 5 * sigma, points)
    density = np.zeros_like(grid)
    for node, weight in zip(nodes, weights):
        density += weight * np.exp(-0.5 * ((grid - node) / sigma) ** 2)
    return grid, density / (sigma * np.sqrt(2 * np.pi)), float(sigma)


def hessian_density(model: nn.Module | LoadedModel, data: DataLike | None = None,
                    num_vectors: int = 4, steps: int = 48, reorthogonalise: bool = True,
                    sigma: float | None = None, grid_points: int = 1000, params: ParamFilter = None,
                    loss_fn: LossFn | None = None, keep_graphs: KeepGraphs = "auto", seed: int = 0,
                    operator: HessianOperator | None = None) -> DensityResult:
    """Spectral density of the Hessian by SLQ: ``num_vectors`` x ``steps`` products.

    ``reorthogonalise=False`` keeps two Lanczos vectors instead of ``steps`` (for models whose
    parameter vector times ``steps`` does not fit in memory).
    """
    if num_vectors < 1 or steps < 1:
        raise UserError(f"need num_vectors >= 1 and steps >= 1 (got {num_vectors}, {steps})")
    loaded = as_loaded(operator.loaded if operator is not None else model)
    started = time.perf_counter()
    op = operator_for(loaded, data, operator, loss_fn, params, keep_graphs)
    before = op.hvps
    generator = torch.Generator().manual_seed(seed)
    runs = [quadrature(op, min(steps, op.size), generator, reorthogonalise) for _ in range(num_vectors)]
    width = max(len(nodes) for nodes, _ in runs)
    nodes = np.full((num_vectors, width), np.nan)
    weights = np.zeros((num_vectors, width))
    for j, (theta, w) in enumerate(runs):
        nodes[j, :len(theta)], weights[j, :len(w)] = theta, w / num_vectors
    grid, density, sigma = smooth(nodes, weights, sigma, grid_points)
    return DensityResult(
        model=loaded.label, seconds=time.perf_counter() - started, num_images=op.num_images,
        num_params=op.size, params=describe(params), nodes=nodes, weights=weights, grid=grid,
        density=density, sigma=sigma, hvps=op.hvps - before, reorthogonalise=reorthogonalise)
