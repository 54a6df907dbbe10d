"""Mean attention distance per layer and head (Dosovitskiy et al. 2020, "An Image is Worth
16x16 Words", Fig. 7): for each query patch, the attention-weighted pixel distance to the key
patches, averaged over queries and images.

Prefix tokens (class, distillation, registers) are dropped as queries and as keys. ``raw``
keeps the mass the query put on prefix keys out of the sum: this is the paper's quantity (and
Raghu et al. 2021's), the headline ``mean_attention_distance``. ``renormalised`` divides by the
mass left on patches, a true average distance that inflates each query by 1/(1 - prefix mass);
it is vitprobe's own variant, reported as ``mean_attention_distance_renormalised``.
Distances run between patch centres: patch size x grid offset, per axis (non-square patches
and grids are fine). The uniform-attention baseline is the same average for attention spread
evenly over all patch keys (self included). Confidence intervals are Student-t intervals over
the per-image values (each image's mean over queries).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import pandas as pd
import torch
from scipy import stats
from torch import nn

from vitprobe import distributed
from vitprobe.attention.capture import AttentionCapture
from vitprobe.attention.inputs import ImagesLike, on_device, prepared
from vitprobe.data.batches import Batch, spatial_size
from vitprobe.errors import UserError
from vitprobe.models.loaded import LoadedModel
from vitprobe.models.token_layout import TokenLayout
from vitprobe.result import Result, analysis

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def patch_distances(grid: tuple[int, int], patch_size: tuple[int, int]) -> torch.Tensor:
    """(P, P) pixel distances between the centres of the patches of a row-major grid."""
    rows, cols = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    centres = torch.stack([rows.flatten() * patch_size[0], cols.flatten() * patch_size[1]], 1)
    return torch.cdist(centres.double(), centres.double())


def uniform_baseline(grid: tuple[int, int], patch_size: tuple[int, int]) -> float:
    """Mean attention distance of attention spread uniformly over all patch keys."""
    return float(patch_distances(grid, patch_size).mean())


def attention_distances(attention: torch.Tensor, layout: TokenLayout,
                        distances: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image and head, (raw, renormalised) mean attention distance of one layer's
    (B, heads, N, N) attention, averaged over patch queries: two (B, heads) tensors."""
    p = layout.num_prefix_tokens
    if distances is None:
        distances = patch_distances(layout.grid, layout.patch_size)
    patches = attention[:, :, p:, p:].double()
    weighted = (patches * distances.to(patches.device)).sum(-1)
    raw = weighted.mean(-1)
    renormalised = (weighted / patches.sum(-1)).mean(-1)
    return raw, renormalised


def t_interval(values: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and Student-t confidence bounds over axis 0 (NaN bounds for a single value)."""
    n = values.shape[0]
    mean = values.mean(0)
    if n < 2:
        nan = np.full_like(mean, np.nan)
        return mean, nan, nan
    half = stats.t.ppf(0.5 + confidence / 2, n - 1) * values.std(0, ddof=1) / np.sqrt(n)
    return mean, mean - half, mean + half


@dataclass(kw_only=True)
class AttentionDistanceResult(Result):
    """Per-image mean attention distances in pixels, (images, layers, heads), raw and
    renormalised over patch keys, plus the uniform baseline of the grid."""

    layout: TokenLayout
    raw: np.ndarray
    renormalised: np.ndarray
    baseline: float
    confidence: float = 0.95

    INDEX: ClassVar[tuple[str, ...]] = ("metric", "layer", "head")
    REPORTED: ClassVar[tuple[str, ...]] = ("layer_attention_distance", "uniform_attention_distance")

    def summary(self, renormalised: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(mean, ci_low, ci_high), each (layers, heads), over images."""
        return t_interval(self.renormalised if renormalised else self.raw, self.confidence)

    def rows(self) -> list[dict]:
        """Rows ``metric, layer, head, value, ci_low, ci_high``: metric ``mean_attention_distance``
        (raw, as the paper), ``mean_attention_distance_renormalised``, ``layer_attention_distance``
        (raw, the mean over heads per layer, with the interval over images of that mean) and one
        ``uniform_attention_distance`` row (the baseline; layer and head empty)."""
        rows = []
        for metric, renorm in (("mean_attention_distance", False), ("mean_attention_distance_renormalised", True)):
            mean, low, high = self.summary(renorm)
            for layer in range(mean.shape[0]):
                for head in range(mean.shape[1]):
                    rows.append({"metric": metric, "layer": layer, "head": head,
                                 "value": float(mean[layer, head]), "ci_low": float(low[layer, head]),
                                 "ci_high": float(high[layer, head])})
        mean, low, high = t_interval(self.raw.mean(axis=2), self.confidence)
        rows += [{"metric": "layer_attention_distance", "layer": layer, "value": float(mean[layer]),
                  "ci_low": float(low[layer]), "ci_high": float(high[layer])} for layer in range(len(mean))]
        rows.append({"metric": "uniform_attention_distance", "value": self.baseline,
                     "ci_low": self.baseline, "ci_high": self.baseline})
        return rows

    def to_frame(self) -> pd.DataFrame:
        frame = super().to_frame()
        return frame.astype({"layer": "Int64", "head": "Int64"})

    def plot(self) -> Figure:
        """Mean attention distance against depth, with the uniform baseline."""
        from vitprobe.attention.figures import distance_figure

        return distance_figure([self])

@analysis
@torch.no_grad()
def mean_attention_distance(model: nn.Module | LoadedModel, data: ImagesLike, *,
                            confidence: float = 0.95) -> AttentionDistanceResult:
    """Mean attention distance (Dosovitskiy et al. 2020, Fig. 7) of every layer and head, with
    a Student-t ``confidence`` interval over images and the uniform-attention baseline."""
    loaded, batches = prepared(model, data)
    amodel = loaded.attention
    layout = amodel.layout(spatial_size(batches[0][0]))

    def distances_of(batch: Batch, index: int, offset: int) -> tuple[torch.Tensor, torch.Tensor]:
        images = on_device(loaded, batch)[0]
        if amodel.layout(spatial_size(images)) != layout:
            raise UserError("mean_attention_distance needs images of one size (one patch grid)")
        distances = patch_distances(layout.grid, layout.patch_size)
        raw = torch.empty(len(images), amodel.num_layers, amodel.num_heads, dtype=torch.float64)
        renorm = torch.empty_like(raw)

        def measure(layer: int, attention: torch.Tensor) -> None:
            layer_raw, layer_renorm = attention_distances(attention, layout, distances)
            raw[:, layer], renorm[:, layer] = layer_raw.cpu(), layer_renorm.cpu()

        AttentionCapture(amodel, measure).run(images)
        return raw, renorm

    raw_parts, renorm_parts = zip(*distributed.map_batches(distances_of, batches))
    return AttentionDistanceResult(model=loaded.label, images=batches.num_images, layout=layout,
                             raw=torch.cat(raw_parts).numpy(), renormalised=torch.cat(renorm_parts).numpy(),
                             baseline=uniform_baseline(layout.grid, layout.patch_size),
                             confidence=confidence)
