"""Figures: ERF heatmaps of every model side by side on one colour scale, and how far the field
reaches against depth (ERF, theoretical bound for CNNs, mean attention distance for ViTs)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from vitprobe.receptive_field.result import ReceptiveFieldResult  # noqa: E402

COLOURMAP = "magma"
STAGE_OR_BLOCK = re.compile(r"^(?:(?:.*\.)?(?:blocks|layers?)\.(\d+)|layer(\d+))$")


def layer_depths(layers: Sequence[str]) -> np.ndarray:
    """Depth of each layer for the x axis: ``blocks.N`` (or ``...layer.N``, ``...layers.N``) is
    N + 1, the (N + 1)-th attention layer; ``layerN`` is N, the N-th ResNet stage; other names
    count from 1 in order."""
    matches = [match for name in layers if (match := STAGE_OR_BLOCK.match(name))]
    if len(matches) < len(layers):
        return np.arange(1, len(layers) + 1)
    return np.array([int(m.group(1)) + 1 if m.group(1) is not None else int(m.group(2))
                     for m in matches])


def erf_heatmaps(results: Sequence[ReceptiveFieldResult]):
    """One row per model, one column per layer: the scaled ERF maps (each divided by its own
    maximum, as RepLKNet displays them) on one shared colour scale [0, 1]; a cyan cross marks
    the pixel the scores are measured around."""
    columns = max(len(result.layers) for result in results)
    fig, axes = plt.subplots(len(results), columns, squeeze=False,
                             figsize=(2.1 * columns + 0.8, 2.2 * len(results)))
    image = None
    for row, result in enumerate(results):
        h, w = result.input_size
        for col in range(columns):
            ax = axes[row, col]
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlim(0, w)
            ax.set_ylim(h, 0)
            if col >= len(result.layers):
                ax.axis("off")
                continue
            image = ax.imshow(result.scaled[col], cmap=COLOURMAP, vmin=0.0, vmax=1.0,
                              interpolation="nearest", extent=(0, w, h, 0))
            cy, cx = result.score_centres[col]
            ax.plot(cx + 0.5, cy + 0.5, "+", color="cyan", ms=5, mew=0.8)
            title = result.layers[col] or "output"
            theory = result.theoretical[col] if col < len(result.theoretical) else None
            if theory is not None:
                size = theory.size[0]
                title += "\nTRF global" if math.isinf(size) else f"\nTRF {size:g} px"
            ax.set_title(title, fontsize=8)
            if col == 0:
                ax.set_ylabel(f"{result.model}\n{h}x{w}", fontsize=8)
    fig.suptitle(f"Effective receptive fields ({results[0].scale} scale, / max)", fontsize=10)
    fig.tight_layout()
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="scaled contribution")
    return fig


def attention_distance_by_layer(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean, min and max over heads of ``mean_attention_distance`` per layer, from the tidy
    frame of :func:`vitprobe.attention.mean_attention_distance` (layer = block index)."""
    rows = frame[frame["metric"] == "mean_attention_distance"]
    grouped = rows.groupby("layer")["value"]
    return pd.DataFrame({"mean": grouped.mean(), "min": grouped.min(), "max": grouped.max()})


def extent_figure(results: Sequence[ReceptiveFieldResult],
                  attention_distances: Mapping[str, pd.DataFrame] | None = None):
    """Distance from the centre (pixels, log scale) against depth, one colour per model.

    Solid: the ERF's mass-weighted mean distance from its score centre (the unit's field centre). Dashed (CNNs): the
    theoretical field's half-width, (size - 1) / 2, the farthest row or column it reaches.
    Dotted (ViTs, when given): the mean attention distance per layer, averaged over heads, with
    the range over heads shaded. Both means weight pixel distances the same way: by gradient
    mass for the ERF, by attention for the heads (Dosovitskiy et al. 2020, Fig. 7).
    """
    attention_distances = attention_distances or {}
    fig, ax = plt.subplots(figsize=(7.6, 4.2))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    half_sizes: set[float] = set()
    depths: set[int] = set()
    for index, result in enumerate(results):
        colour = colours[index % len(colours)]
        depth = layer_depths(result.layers)
        depths.update(int(d) for d in depth)
        mean = [result.mean_distance(i) for i in range(len(result.layers))]
        ax.plot(depth, mean, "o-", color=colour, label=f"{result.model} ({result.family})")
        theory = [t.size[0] if t is not None else np.nan for t in result.theoretical]
        if not all(np.isnan(theory)):
            ax.plot(depth, (np.asarray(theory, dtype=float) - 1) / 2, "s--", color=colour,
                    alpha=0.8)
        frame = attention_distances.get(result.model)
        if frame is not None:
            by_layer = attention_distance_by_layer(frame)
            layers = by_layer.index.to_numpy(dtype=int) + 1
            ax.plot(layers, by_layer["mean"], "^:", color=colour)
            ax.fill_between(layers, by_layer["min"], by_layer["max"], color=colour, alpha=0.12)
            depths.update(int(d) for d in layers)
        half_sizes.add(max(result.input_size) / 2)
    for half in sorted(half_sizes):
        ax.axhline(half, color="0.6", lw=0.8)
        ax.annotate(f"half the input ({half:g} px)", (ax.get_xlim()[0], half), fontsize=7,
                    color="0.4", va="bottom")
    ax.set_yscale("log")
    ax.set_xticks(sorted(depths))
    ax.set_xlabel("depth (ResNet stage / ViT block)")
    ax.set_ylabel("distance from the centre (pixels)")
    style = [Line2D([], [], color="0.3", ls="-", marker="o", label="ERF mean distance"),
             Line2D([], [], color="0.3", ls="--", marker="s", label="theoretical half-width (CNN)"),
             Line2D([], [], color="0.3", ls=":", marker="^",
                    label="mean attention distance (ViT, head range shaded)")]
    first = ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=7, title="model",
                      title_fontsize=7)
    ax.add_artist(first)
    ax.legend(handles=style, loc="lower left", bbox_to_anchor=(1.02, 0.0), fontsize=7)
    ax.set_title("How far one unit sees, against depth", fontsize=10)
    fig.tight_layout()
    return fig
