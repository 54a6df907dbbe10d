"""Figures of loss landscapes: 1-D curves of several models on one axis; 2-D contour lines,
filled heatmaps and 3-D surfaces with one colour scale for all the models being compared.

The loss uses a logarithmic colour scale (loss surfaces span decades between the centre and
the edges); accuracy a linear one. Non-finite values (a diverged point) are left blank.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib import colors
from matplotlib.figure import Figure

from vitprobe.landscape.result import LandscapeResult

CMAP = "viridis"


def scale(results: Sequence[LandscapeResult], metric: str = "loss") -> colors.Normalize:
    """One colour scale over the finite values of every result."""
    finite = np.concatenate([r.surface(metric)[np.isfinite(r.surface(metric))] for r in results])
    if finite.size == 0:
        return colors.Normalize(0, 1)
    low, high = float(finite.min()), float(finite.max())
    if high <= low:
        high = low + 1e-12
    if metric == "loss" and low > 0:
        return colors.LogNorm(low, high)
    return colors.Normalize(low, high)


def _bounds(norm: colors.Normalize) -> tuple[float, float]:
    """The limits :func:`scale` gave ``norm``."""
    if norm.vmin is None or norm.vmax is None:
        raise ValueError("a colour scale without limits")
    return float(norm.vmin), float(norm.vmax)


def _levels(norm: colors.Normalize, count: int = 20) -> np.ndarray:
    low, high = _bounds(norm)
    return np.geomspace(low, high, count) if isinstance(norm, colors.LogNorm) else np.linspace(low, high, count)


def _title(result: LandscapeResult) -> str:
    return f"{result.model} ({result.kind})"


def _two_d(results: Sequence[LandscapeResult]) -> list[LandscapeResult]:
    chosen = [r for r in results if not r.is_1d]
    if not chosen:
        raise ValueError("these figures need 2-D landscapes (a grid with two axes)")
    return chosen


def _panels(count: int, three_d: bool = False) -> tuple[Figure, list]:
    figure = Figure(figsize=(4.2 * count + 0.8, 3.8), layout="constrained")
    options = {"projection": "3d"} if three_d else {}
    return figure, [figure.add_subplot(1, count, i + 1, **options) for i in range(count)]


def plot_curves(results: Sequence[LandscapeResult]) -> Figure:
    """Loss and accuracy along alpha, every model on the same two axes.

    A 2-D landscape contributes its beta = 0 row (the slice along d1).
    """
    figure = Figure(figsize=(9.5, 3.6), layout="constrained")
    loss_axis, accuracy_axis = figure.add_subplot(1, 2, 1), figure.add_subplot(1, 2, 2)
    for result in results:
        rows = np.flatnonzero(result.betas == 0)
        if rows.size == 0:
            continue
        loss_axis.plot(result.alphas, result.loss[rows[0]], label=result.model)
        accuracy_axis.plot(result.alphas, result.accuracy[rows[0]], label=result.model)
    loss_axis.set(xlabel="alpha", ylabel="loss", yscale="log", title="loss")
    accuracy_axis.set(xlabel="alpha", ylabel="accuracy", title="accuracy")
    loss_axis.legend(fontsize="small")
    return figure


def plot_contours(results: Sequence[LandscapeResult], metric: str = "loss") -> Figure:
    """Contour lines of each 2-D landscape at the same levels for every model."""
    chosen = _two_d(results)
    norm = scale(chosen, metric)
    figure, axes = _panels(len(chosen))
    for axis, result in zip(axes, chosen):
        lines = axis.contour(result.alphas, result.betas, result.surface(metric), levels=_levels(norm),
                             norm=norm, cmap=CMAP, linewidths=0.9)
        axis.clabel(lines, fontsize=6, fmt="%.4g")
        axis.plot([0], [0], marker="+", color="black")
        axis.set(xlabel="alpha", ylabel="beta", title=_title(result), aspect="equal")
    return figure


def plot_heatmaps(results: Sequence[LandscapeResult], metric: str = "loss") -> Figure:
    """Filled heatmaps of each 2-D landscape with one shared colour bar."""
    chosen = _two_d(results)
    norm = scale(chosen, metric)
    figure, axes = _panels(len(chosen))
    image = None
    for axis, result in zip(axes, chosen):
        surface = np.ma.masked_invalid(result.surface(metric))
        image = axis.pcolormesh(result.alphas, result.betas, surface, norm=norm, cmap=CMAP, shading="nearest")
        axis.set(xlabel="alpha", ylabel="beta", title=_title(result), aspect="equal")
    if image is not None:
        figure.colorbar(image, ax=axes, label=metric)
    return figure


def plot_surfaces(results: Sequence[LandscapeResult], metric: str = "loss") -> Figure:
    """3-D surfaces of each 2-D landscape, with the same colours and vertical range."""
    chosen = _two_d(results)
    norm = scale(chosen, metric)
    figure, axes = _panels(len(chosen), three_d=True)
    for axis, result in zip(axes, chosen):
        alpha, beta = np.meshgrid(result.alphas, result.betas)
        surface = result.surface(metric)
        height = np.log10(surface) if isinstance(norm, colors.LogNorm) else surface
        axis.plot_surface(alpha, beta, np.where(np.isfinite(height), height, np.nan),
                          facecolors=_colours(surface, norm), linewidth=0, antialiased=False, shade=False)
        low, high = _bounds(norm)
        bottom, top = (np.log10(low), np.log10(high)) if isinstance(norm, colors.LogNorm) else (low, high)
        axis.set(xlabel="alpha", ylabel="beta", zlim=(bottom, top), title=_title(result),
                 zlabel=f"log10 {metric}" if isinstance(norm, colors.LogNorm) else metric)
    return figure


def _colours(surface: np.ndarray, norm: colors.Normalize) -> np.ndarray:
    from matplotlib import colormaps

    return colormaps[CMAP](norm(np.ma.masked_invalid(surface)))
