"""``hessian_density``: the eigenvalue density by stochastic Lanczos quadrature.

Ghorbani, Krishnan & Xiao (2019), after Golub & Meurant and Lin, Saad & Yang (2016): for each of
``num_probes`` random unit vectors v, ``max_iter`` Lanczos steps give T = V^T H V; its eigenvalues are
Gauss quadrature nodes and the squared first components of its eigenvectors their weights, so
v^T f(H) v ~ sum_i w_i f(theta_i). Averaged over v and smoothed with a Gaussian kernel this is the
spectral density. Without reorthogonalisation only two Lanczos vectors are kept (memory of two
vectors instead of ``max_iter``): spurious copies of converged Ritz values appear, but the quadrature
stays accurate (Knizhnerman 1996; Ghorbani et al. 2019, section 3).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from vitprobe.data.batches import DataLike
from vitprobe.errors import UserError
from vitprobe.models.loaded import LoadedModel
from vitprobe.result import analysis
from vitprobe.sharpness.lanczos import Lanczos, SymmetricOperator, products
from vitprobe.sharpness.loss import LossFn
from vitprobe.sharpness.memory import vectors_that_fit
from vitprobe.sharpness.operator import HessianOperator, KeepGraphs
from vitprobe.sharpness.results import DensityResult
from vitprobe.sharpness.vectors import ParamFilter, rademacher


def quadrature(op: SymmetricOperator, steps: int, generator: torch.Generator,
               reorthogonalise: bool) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights (summing to 1) of one Lanczos run from a Rademacher vector."""
    run = Lanczos(products(op), rademacher(op.shape[0], generator, op.dtype, op.device),
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


@dataclass
class DensityEstimate:
    """SLQ's quadrature (``nodes``, ``weights``: probes x steps, NaN-padded) and the smoothed
    ``density`` on ``grid``."""

    nodes: np.ndarray
    weights: np.ndarray
    grid: np.ndarray
    density: np.ndarray
    sigma: float
    hvps: int
    reorthogonalised: bool = True  # False when asked, or when the basis would not fit in memory


def spectral_density(operator: SymmetricOperator, *, num_probes: int = 4, max_iter: int = 48,
                     reorthogonalise: bool = True, sigma: float | None = None, grid_points: int = 1000,
                     seed: int = 0) -> DensityEstimate:
    """Spectral density of any symmetric operator by SLQ: ``num_probes`` Lanczos runs of ``max_iter``
    steps. ``reorthogonalise=False`` keeps two Lanczos vectors instead of ``max_iter``; it is also
    what runs when ``max_iter`` vectors would not fit in half the free memory (ViT-B/16: 344 MB a
    vector), since ghost Ritz values do not bias the quadrature."""
    if num_probes < 1 or max_iter < 1:
        raise UserError(f"need num_probes >= 1 and max_iter >= 1 (got {num_probes}, {max_iter})")
    generator = torch.Generator().manual_seed(seed)
    steps = min(max_iter, operator.shape[0])
    reorthogonalise = reorthogonalise and steps + 1 <= vectors_that_fit(operator.shape[0], operator.dtype,
                                                                         operator.device)
    runs = [quadrature(operator, steps, generator, reorthogonalise) for _ in range(num_probes)]
    width = max(len(nodes) for nodes, _ in runs)
    nodes = np.full((num_probes, width), np.nan)
    weights = np.zeros((num_probes, width))
    for j, (theta, w) in enumerate(runs):
        nodes[j, :len(theta)], weights[j, :len(w)] = theta, w / num_probes
    grid, density, sigma = smooth(nodes, weights, sigma, grid_points)
    return DensityEstimate(nodes, weights, grid, density, sigma, hvps=sum(len(t) for t, _ in runs),
                           reorthogonalised=reorthogonalise)


@analysis
def hessian_density(model: nn.Module | LoadedModel, data: DataLike, *, num_probes: int = 4,
                    max_iter: int = 48, reorthogonalise: bool = True, sigma: float | None = None,
                    grid_points: int = 1000, params: ParamFilter = None, loss_fn: LossFn | None = None,
                    keep_graphs: KeepGraphs = "auto", seed: int = 0) -> DensityResult:
    """Spectral density of the Hessian: :func:`spectral_density` on a :class:`HessianOperator`."""
    operator = HessianOperator(model, data, loss_fn=loss_fn, params=params, keep_graphs=keep_graphs)
    return density_of(operator, num_probes=num_probes, max_iter=max_iter, reorthogonalise=reorthogonalise,
                      sigma=sigma, grid_points=grid_points, seed=seed)


def density_of(operator: HessianOperator, *, num_probes: int = 4, max_iter: int = 48,
               reorthogonalise: bool = True, sigma: float | None = None, grid_points: int = 1000,
               seed: int = 0) -> DensityResult:
    """:func:`hessian_density` on an existing operator (whose kept graphs are reused)."""
    started = time.perf_counter()
    estimate = spectral_density(operator, num_probes=num_probes, max_iter=max_iter,
                                reorthogonalise=reorthogonalise, sigma=sigma, grid_points=grid_points,
                                seed=seed)
    return DensityResult(
        model=operator.loaded.label, seconds=time.perf_counter() - started, images=operator.num_images,
        options={"num_probes": num_probes, "max_iter": max_iter, "reorthogonalise": reorthogonalise,
                 "sigma": sigma, "seed": seed, "params": operator.params_label},
        parameters=operator.size, params=operator.params_label, nodes=estimate.nodes,
        weights=estimate.weights, grid=estimate.grid, density=estimate.density, sigma=estimate.sigma,
        hvps=estimate.hvps, reorthogonalise=estimate.reorthogonalised)
