"""Reliability diagrams: accuracy against confidence per bin (Guo et al. 2017, Fig. 1)."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from vitprobe.evaluation.calibration import reliability_table  # noqa: E402
from vitprobe.evaluation.evaluate import EvaluationResult  # noqa: E402


def reliability_figure(results: Sequence[EvaluationResult]):
    """One panel per model: bars of per-bin accuracy, the diagonal, and the ECE in the title."""
    fig, axes = plt.subplots(1, len(results), figsize=(3.2 * len(results), 3.2), squeeze=False)
    for ax, result in zip(axes[0], results):
        table = reliability_table(result.confidences, result.correct[1], result.num_bins)
        width = table["high"] - table["low"]
        ax.bar(table["low"], table["accuracy"], width=width, align="edge",
               edgecolor="black", linewidth=0.5, label="accuracy")
        ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=1)
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", aspect="equal",
               title=f"{result.model}\nECE {result.ece:.3f}, top-1 {result.accuracy(1):.3f}")
    axes[0][0].set_ylabel("accuracy")
    fig.tight_layout()
    return fig
