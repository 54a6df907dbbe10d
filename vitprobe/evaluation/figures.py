"""Reliability diagrams: accuracy against confidence per bin (Guo et al. 2017, Fig. 1)."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from vitprobe.evaluation.calibration import reliability_table  # noqa: E402
from vitprobe.evaluation.evaluate import EvaluationResult  # noqa: E402
from vitprobe.evaluation.intervals import wilson_interval  # noqa: E402


def reliability_figure(results: Sequence[EvaluationResult]):
    """One panel per model: bars of per-bin accuracy with its Wilson interval (binomial, over the
    bin's images), the diagonal, and the ECE in the title."""
    fig, axes = plt.subplots(1, len(results), figsize=(3.2 * len(results), 3.2), squeeze=False)
    for ax, result in zip(axes[0], results):
        table = reliability_table(result.confidences, result.correct[1], result.num_bins)
        width = table["high"] - table["low"]
        ax.bar(table["low"], table["accuracy"], width=width, align="edge",
               edgecolor="black", linewidth=0.5, label="accuracy")
        filled = table["count"] > 0
        bounds = np.array([wilson_interval(round(a * n), int(n), result.confidence_level)
                           for a, n in zip(table["accuracy"][filled], table["count"][filled])]).reshape(-1, 2)
        centres = (table["low"] + width / 2)[filled]
        accuracy = table["accuracy"][filled]
        # the Wilson interval holds p; clipping only drops rounding (an upper bound of 1 - 1e-16 at p = 1)
        lengths = np.clip([accuracy - bounds[:, 0], bounds[:, 1] - accuracy], 0, None)
        ax.errorbar(centres, accuracy, yerr=lengths, linestyle="none", color="black", capsize=2, linewidth=0.8)
        ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=1)
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", aspect="equal",
               title=f"{result.model}\nECE {result.ece:.3f}, top-1 {result.accuracy(1):.3f}")
    axes[0][0].set_ylabel("accuracy")
    fig.tight_layout()
    return fig
