"""Figure: top-1 accuracy against corruption severity (mean over the corruptions), clean at 0."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from vitprobe.evaluation.intervals import wilson_interval  # noqa: E402
from vitprobe.robustness.corruption import CorruptionResult  # noqa: E402


def severity_figure(results: Sequence[CorruptionResult], confidence: float = 0.95):
    """Accuracy against severity per model, with a Wilson interval of each point over the images
    (the corruptions share the images, so the mean over them is given the images' count, not the
    images x corruptions a pooled interval would claim)."""
    fig, ax = plt.subplots(figsize=(4.6, 3.4))
    for result in results:
        label = result.model if result.mce is None else f"{result.model} (mCE {result.mce:.2f})"
        accuracy = np.array([result.clean_accuracy, *result.accuracy.mean(0)])
        bounds = np.array([wilson_interval(round(a * result.images), result.images, confidence) for a in accuracy])
        severities = [0, *result.severities]
        line, = ax.plot(severities, accuracy, marker="o", label=label)
        ax.fill_between(severities, bounds[:, 0], bounds[:, 1], color=line.get_color(), alpha=0.15)
    ax.set_xlabel("severity (0: clean)")
    ax.set_ylabel("top-1 accuracy, mean over corruptions")
    ax.set_title(f"band: {int(round(100 * confidence))}% Wilson interval over the images", fontsize=9)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
