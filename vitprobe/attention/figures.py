"""Figures: maps over images side by side per model, raw attention of one query patch per
layer and head, and mean attention distance against depth with the uniform baseline."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from vitprobe.attention.capture import AttentionMapsResult  # noqa: E402
from vitprobe.attention.distance import AttentionDistanceResult  # noqa: E402
from vitprobe.attention.maps import SaliencyResult  # noqa: E402
from vitprobe.data.batches import spatial_size


def _unit(values: np.ndarray) -> np.ndarray:
    """Scaled to [0, 1]; a map constant up to rounding is drawn as zero, not as amplified noise."""
    low, high = float(values.min()), float(values.max())
    if high - low <= 1e-6 * max(abs(high), abs(low), 1e-30):
        return np.zeros_like(values)
    return (values - low) / (high - low)


def _show(ax, image: np.ndarray) -> None:
    ax.imshow(np.clip(image.transpose(1, 2, 0), 0, 1), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def overlay_figure(images: np.ndarray, results: Sequence[SaliencyResult], max_images: int = 4,
                   source: int = 0):
    """Rows: images (displayable, (n, 3, H, W) in [0, 1]); columns: the image, then each
    result's map (first ``source``) upsampled and overlaid, one column per model."""
    n = min(max_images, len(images))
    fig, axes = plt.subplots(n, 1 + len(results), figsize=(1.9 * (1 + len(results)), 1.9 * n),
                             squeeze=False)
    for row in range(n):
        _show(axes[row, 0], images[row])
        for col, result in enumerate(results, start=1):
            ax = axes[row, col]
            _show(ax, images[row])
            heat = result.upsampled(spatial_size(images))[row, min(source, len(result.sources) - 1)]
            ax.imshow(_unit(heat), cmap="jet", alpha=0.5, interpolation="bilinear")
            if row == 0:
                ax.set_title(f"{result.model}\n{result.title}", fontsize=8)
    axes[0, 0].set_title("image", fontsize=8)
    fig.tight_layout()
    return fig


def raw_attention_figure(maps: AttentionMapsResult, image: np.ndarray, query: tuple[int, int],
                         image_index: int = 0):
    """A grid of raw attention maps (rows: layers, columns: heads) of one query patch of one
    image, with the image and the query patch outlined in the first column."""
    layout = maps.layout
    fig, axes = plt.subplots(len(maps.layers), 1 + len(maps.heads),
                             figsize=(1.6 * (1 + len(maps.heads)), 1.6 * len(maps.layers)), squeeze=False)
    ph, pw = image.shape[-2] / layout.grid[0], image.shape[-1] / layout.grid[1]
    for i, layer in enumerate(maps.layers):
        _show(axes[i, 0], image)
        axes[i, 0].add_patch(Rectangle((query[1] * pw - 0.5, query[0] * ph - 0.5), pw, ph,
                                       fill=False, edgecolor="red", linewidth=1.5))
        axes[i, 0].set_ylabel(f"layer {layer}", fontsize=8)
        for j, head in enumerate(maps.heads):
            ax = axes[i, j + 1]
            ax.imshow(maps.query_map(layer, head, query)[image_index], cmap="viridis",
                      interpolation="nearest")
            ax.add_patch(Rectangle((query[1] - 0.5, query[0] - 0.5), 1, 1, fill=False,
                                   edgecolor="red", linewidth=1))
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(f"head {head}", fontsize=8)
    fig.suptitle(f"{maps.model}: attention of patch {query}", fontsize=9)
    fig.tight_layout()
    return fig


def distance_figure(results: Sequence[AttentionDistanceResult]):
    """One panel per model: mean attention distance (raw, as the ViT paper; pixels) against depth, one
    point per head with its confidence interval, and the uniform-attention baseline."""
    fig, axes = plt.subplots(1, len(results), figsize=(3.4 * len(results), 3.0), squeeze=False,
                             sharey=True)
    for ax, result in zip(axes[0], results):
        mean, low, high = result.summary()
        layers, heads = mean.shape
        for head in range(heads):
            x = np.arange(layers) + (head - (heads - 1) / 2) * 0.08
            ax.errorbar(x, mean[:, head], yerr=[mean[:, head] - low[:, head], high[:, head] - mean[:, head]],
                        fmt="o", markersize=3, linewidth=0.8, capsize=1.5, label=f"head {head}")
        ax.axhline(result.baseline, color="grey", linestyle="--", linewidth=1, label="uniform")
        ax.set(xlabel="layer", title=result.model, xticks=range(layers))
        ax.set_ylim(bottom=0)
    axes[0][0].set_ylabel("mean attention distance (px)")
    axes[0][-1].legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    return fig


def quality_figure(frame):
    """One panel per map-quality metric: a bar per model and method (one colour per method), the
    random control hatched, and the mask area (the localisation metrics' chance level) dashed."""
    metrics = [m for m in ("mass_in_mask", "pointing_game", "deletion_auc", "insertion_auc",
                           "positive_perturbation_auc", "negative_perturbation_auc")
               if m in set(frame["metric"])]
    methods = list(dict.fromkeys(frame["method"]))
    columns = min(3, len(metrics))
    rows_of_panels = -(-len(metrics) // columns)
    fig, axes = plt.subplots(rows_of_panels, columns, figsize=(4.4 * columns, 4.2 * rows_of_panels),
                             squeeze=False, layout="constrained")
    for ax, metric in zip(axes.flat, metrics):
        rows = frame[frame["metric"] == metric]
        colours = ["0.75" if m == "random" else f"C{methods.index(m) % 10}" for m in rows["method"]]
        bars = ax.bar(range(len(rows)), rows["value"], yerr=rows["std_error"].fillna(0), capsize=2,
                      color=colours)
        for bar, method in zip(bars, rows["method"]):
            if method == "random":
                bar.set_hatch("//")
        if metric in ("mass_in_mask", "pointing_game"):
            area = frame[frame["metric"] == "mask_area"]["value"].mean()
            ax.axhline(area, color="black", linestyle="--", linewidth=1, label="mask area")
            ax.legend(fontsize=7)
        ax.set_xticks(range(len(rows)), [f"{m} {method}" for m, method in zip(rows["model"], rows["method"])],
                      rotation=90, fontsize=6)
        ax.set_title(metric.replace("_", " "), fontsize=9)
        ax.set_ylim(0, 1)
    for ax in list(axes.flat)[len(metrics):]:
        ax.set_visible(False)
    return fig
