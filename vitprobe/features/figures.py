"""Figures: CKA heatmaps (Raghu et al. 2021, Fig. 1-2) and the high-frequency log amplitude
against depth (Park & Kim 2022, Fig. 2b)."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from vitprobe.features.frequency import FrequencyResult  # noqa: E402
from vitprobe.features.similarity import SimilarityResult  # noqa: E402


def cka_heatmaps(results: Sequence[SimilarityResult]):
    """One panel per result: CKA of every pair of layers on one colour scale [0, 1], the first
    layer at the bottom left as in Raghu et al."""
    fig, axes = plt.subplots(1, len(results), squeeze=False, figsize=(4.0 * len(results), 3.6),
                             layout="constrained")
    image = None
    for ax, result in zip(axes[0], results):
        image = ax.imshow(result.cka, origin="lower", cmap="magma", vmin=0, vmax=1, aspect="auto")
        ax.set_xlabel(f"{result.other_model} layer", fontsize=8)
        ax.set_ylabel(f"{result.model} layer", fontsize=8)
        ax.set_xticks(range(len(result.other_layers)), result.other_layers, rotation=90, fontsize=6)
        ax.set_yticks(range(len(result.layers)), result.layers, fontsize=6)
        title = result.model if result.other_model == result.model else f"{result.model} vs {result.other_model}"
        ax.set_title(title, fontsize=9)
    if image is not None:
        fig.colorbar(image, ax=axes[0].tolist(), label="linear CKA", shrink=0.8)
    return fig


def frequency_figure(results: Sequence[FrequencyResult]):
    """The high-frequency log amplitude of each layer against its normalised depth, one line per
    model: attention lowers it (a low-pass filter), convolution raises it (Park & Kim 2022)."""
    fig, ax = plt.subplots(figsize=(4.6, 3.4))
    for result in results:
        depth = np.linspace(0, 1, len(result.layers)) if len(result.layers) > 1 else np.zeros(1)
        ax.plot(depth, result.high, marker="o", label=result.model)
    ax.set_xlabel("normalised depth")
    ax.set_ylabel(r"$\Delta$ log amplitude at high frequency")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
