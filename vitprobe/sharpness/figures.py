"""Figures of the sharpness analysis: each takes results and returns a matplotlib Figure."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402

from vitprobe.sharpness.blocks import BlockSpectrumResult  # noqa: E402
from vitprobe.sharpness.results import DensityResult, SpectrumResult  # noqa: E402
from vitprobe.sharpness.subsets import SubsetsResult, t_summary  # noqa: E402


def eigenvalue_bars(result: SpectrumResult):
    """The top-k Hessian eigenvalues of one model as bars, labelled with their values."""
    with sns.axes_style("whitegrid"):
        figure, ax = plt.subplots(figsize=(1.2 + 0.6 * len(result.eigenvalues), 3.2))
        ks = np.arange(1, len(result.eigenvalues) + 1)
        bars = ax.bar(ks, result.eigenvalues, color=sns.color_palette("deep")[0])
        ax.bar_label(bars, labels=[f"{v:.3g}" for v in result.eigenvalues], fontsize=8)
        ax.set_xticks(ks)
        ax.set_xlabel("k")
        ax.set_ylabel(r"Hessian eigenvalue $\lambda_k$")
        ax.set_title(f"{result.model}\n{result.method}, {result.total_hvps} HVPs, "
                     f"{result.images} images", fontsize=9)
        ax.margins(y=0.15)
    figure.tight_layout()
    return figure


def eigenvalue_comparison(results: Sequence[SpectrumResult]):
    """The top-k eigenvalues of several models side by side (one group of bars per model)."""
    k = max(len(r.eigenvalues) for r in results)
    width = 0.8 / k
    palette = sns.color_palette("deep", k)
    with sns.axes_style("whitegrid"):
        figure, ax = plt.subplots(figsize=(1.5 + 1.3 * len(results), 3.4))
        x = np.arange(len(results))
        for i in range(k):
            values = [r.eigenvalues[i] if i < len(r.eigenvalues) else np.nan for r in results]
            ax.bar(x + (i - (k - 1) / 2) * width, values, width, color=palette[i], label=rf"$\lambda_{i + 1}$")
        ax.set_xticks(x, [r.model for r in results], rotation=15)
        ax.set_ylabel("Hessian eigenvalue")
        log_if_decades(ax, [v for r in results for v in r.eigenvalues])
        if k > 1:
            ax.legend(fontsize=8)
    figure.tight_layout()
    return figure


def log_if_decades(ax, values) -> None:
    """A log y axis when the positive ``values`` span more than a decade."""
    positive = [v for v in np.ravel(values) if np.isfinite(v) and v > 0]
    if positive and max(positive) > 10 * min(positive):
        ax.set_yscale("log")


def lambda_1_intervals(results: Sequence[SubsetsResult]):
    """Each model's lambda_1 (the mean over its disjoint image subsets) with its Student-t
    interval, one bar per model; a log axis when the values span decades."""
    summaries = np.array([t_summary(r.eigenvalues[:, 0], r.confidence) for r in results])
    means, lows, highs = summaries[:, 0], summaries[:, 2], summaries[:, 3]
    with sns.axes_style("whitegrid"):
        figure, ax = plt.subplots(figsize=(1.5 + 1.3 * len(results), 3.4))
        x = np.arange(len(results))
        ax.bar(x, means, 0.6, color=sns.color_palette("deep")[0],
               yerr=np.vstack([means - lows, highs - means]), capsize=4, error_kw={"linewidth": 1})
        for xi, mean, high in zip(x, means, highs):
            ax.annotate(f"{mean:.3g}", (xi, high), textcoords="offset points", xytext=(0, 3), ha="center",
                        fontsize=8)
        ax.set_xticks(x, [r.model for r in results], rotation=15)
        ax.set_ylabel(r"Hessian $\lambda_1$")
        log_if_decades(ax, np.concatenate([means, lows]))
        first = results[0]
        ax.set_title(f"mean over {first.eigenvalues.shape[0]} disjoint subsets of {first.subset_size} images, "
                     f"{int(round(100 * first.confidence))}% t interval", fontsize=9)
        ax.margins(y=0.15)
    figure.tight_layout()
    return figure


def density_plot(result: DensityResult, floor: float = 1e-6):
    """The SLQ spectral density on a log scale, as Ghorbani et al. (2019) plot it."""
    with sns.axes_style("whitegrid"):
        figure, ax = plt.subplots(figsize=(5, 3.2))
        ax.semilogy(result.grid, np.maximum(result.density, floor), color=sns.color_palette("deep")[3])
        ax.set_xlabel("eigenvalue")
        ax.set_ylabel("density (log scale)")
        ax.set_title(f"{result.model}: SLQ, {result.nodes.shape[0]} vectors x {result.nodes.shape[1]} "
                     f"steps, sigma {result.sigma:.2g}", fontsize=9)
    figure.tight_layout()
    return figure


def block_figure(results: Sequence[BlockSpectrumResult]):
    """lambda_1 of each block's Hessian against its normalised depth, one line per model, on a
    log scale: how unevenly curvature is spread over the blocks (Zhang et al. 2024)."""
    fig, ax = plt.subplots(figsize=(4.6, 3.4))
    for result in results:
        depth = np.linspace(0, 1, len(result.blocks)) if len(result.blocks) > 1 else np.zeros(1)
        ax.plot(depth, np.abs(result.eigenvalues), marker="o", label=result.model)
    ax.set_yscale("log")
    ax.set_xlabel("normalised depth (block)")
    ax.set_ylabel(r"$|\lambda_1|$ of the block's Hessian")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
