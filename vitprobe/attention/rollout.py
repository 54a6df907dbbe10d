"""Attention rollout (Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers").

Per layer: fuse the heads (mean, max or min), optionally discard the lowest fraction of the
entries of every row of every image (never the prefix tokens' columns, so the class token's
own column always survives), add the identity for the residual path and renormalise each
row: Â = (A + I) / rowsum(A + I). The rollout of layers s..L is R = Â_L ... Â_s and the map
of a token t is R[t, patches], reshaped to the real patch grid. Each layer's Â is formed as
the forward pass reaches it (the per-head attention is not kept), and only the rows of R a
map needs are formed, by vector-matrix products from the left.

The discard is vitprobe's variant, not vit-explain's: jacobgil's ``vit_rollout.py`` zeroes the
lowest ``discard_ratio`` of all entries of the flattened fused matrix (sparing only entry 0, the
class token's attention to itself); here the lowest fraction of each row's patch entries is
zeroed, per image, and every prefix column is kept, so that one row's low values never decide
another row's. With ``discard_ratio=0`` (the default) the two agree.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from vitprobe import distributed
from vitprobe.attention.capture import AttentionCapture, select
from vitprobe.attention.inputs import ImagesLike, on_device, prepared
from vitprobe.attention.maps import SaliencyResult
from vitprobe.data.batches import Batch, spatial_size
from vitprobe.errors import UserError
from vitprobe.models.loaded import LoadedModel
from vitprobe.models.outputs import logits as output_logits
from vitprobe.models.token_layout import TokenLayout
from vitprobe.result import analysis

HEAD_FUSIONS = ("mean", "max", "min")


def fuse_heads(attention: torch.Tensor, fusion: str = "mean") -> torch.Tensor:
    """(B, heads, N, N) -> (B, N, N) by the mean, max or min over heads."""
    if fusion == "mean":
        return attention.mean(dim=1)
    if fusion == "max":
        return attention.amax(dim=1)
    if fusion == "min":
        return attention.amin(dim=1)
    raise UserError(f"unknown head fusion {fusion!r}; choose from {', '.join(HEAD_FUSIONS)}")


def discard_lowest(fused: torch.Tensor, ratio: float, protected: int) -> torch.Tensor:
    """Zero the ``ratio`` lowest entries of each row of each image among the columns after the
    first ``protected`` (the prefix tokens, which are never discarded)."""
    if not 0.0 <= ratio < 1.0:
        raise UserError(f"the discard ratio must be in [0, 1), got {ratio}")
    count = int(ratio * (fused.shape[-1] - protected))
    if count == 0:
        return fused
    result = fused.clone()
    patches = result[..., protected:]
    lowest = patches.topk(count, dim=-1, largest=False).indices
    patches.scatter_(-1, lowest, 0.0)
    return result


def residual_normalise(fused: torch.Tensor) -> torch.Tensor:
    """(A + I) with every row renormalised to sum 1 (row sums kept as (..., N, 1))."""
    augmented = fused.clone()
    augmented.diagonal(dim1=-2, dim2=-1).add_(1.0)
    return augmented.div_(augmented.sum(dim=-1, keepdim=True))


def rollout_layer(attention: torch.Tensor, fusion: str, discard_ratio: float,
                  protected: int) -> torch.Tensor:
    """Â of one layer from its (B, heads, N, N) attention."""
    return residual_normalise(discard_lowest(fuse_heads(attention, fusion), discard_ratio, protected))


class Rollout:
    """The layers' Â, collected one at a time (``add`` in forward order), and their product
    R = Â_l ... Â_s: in full (``matrix``) or only the rows a map needs (``rows``), which costs
    matrix-vector products, O(N^2) per layer, instead of O(N^3)."""

    def __init__(self, fusion: str = "mean", discard_ratio: float = 0.0, protected: int = 1) -> None:
        self.fusion, self.discard_ratio, self.protected = fusion, discard_ratio, protected
        self.steps: list[torch.Tensor] = []

    def add(self, attention: torch.Tensor) -> None:
        self.steps.append(rollout_layer(attention, self.fusion, self.discard_ratio, self.protected))

    def matrix(self) -> torch.Tensor:
        """R = Â_L ... Â_1: (B, N, N)."""
        result = self.steps[0]
        for step in self.steps[1:]:
            result = step @ result
        return result

    def rows(self, tokens: Sequence[int]) -> torch.Tensor:
        """R[:, tokens]: (B, len(tokens), N), multiplied from the left."""
        result = self.steps[-1][:, list(tokens)]
        for step in reversed(self.steps[:-1]):
            result = result @ step
        return result


def rollout(attentions: Sequence[torch.Tensor], fusion: str = "mean", discard_ratio: float = 0.0,
            protected: int = 1) -> torch.Tensor:
    """R = Â_L ... Â_1 of a list of (B, heads, N, N) attentions, first layer first: (B, N, N)."""
    accumulated = Rollout(fusion, discard_ratio, protected)
    for attention in attentions:
        accumulated.add(attention)
    return accumulated.matrix()


def token_maps(rows: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    """Rows (B, sources, N) of a rollout restricted to the patch columns, on the grid:
    (B, sources, grid rows, grid cols)."""
    patches = rows[:, :, layout.num_prefix_tokens:]
    return patches.reshape(rows.shape[0], rows.shape[1], *layout.grid)


@analysis
@torch.no_grad()
def attention_rollout(model: nn.Module | LoadedModel, data: ImagesLike, *, head_fusion: str = "mean",
                      discard_ratio: float = 0.0, start_layer: int = 0,
                      source: str = "cls") -> SaliencyResult:
    """Attention rollout maps (Abnar & Zuidema 2020) for every image.

    ``head_fusion`` is ``mean``, ``max`` or ``min``; ``discard_ratio`` the fraction of the
    lowest patch entries dropped per row and image; ``start_layer`` the first layer rolled out
    (negative counts from the end); ``source`` ``"cls"``, ``"dist"`` (DeiT distilled) or
    ``"both"``. Maps are (images, sources, rows, cols) on the model's real patch grid.
    """
    loaded, batches = prepared(model, data)
    amodel = loaded.attention
    start = select([start_layer], amodel.num_layers, "layer")[0]
    if head_fusion not in HEAD_FUSIONS:
        raise UserError(f"unknown head fusion {head_fusion!r}; choose from {', '.join(HEAD_FUSIONS)}")
    if not 0.0 <= discard_ratio < 1.0:
        raise UserError(f"the discard ratio must be in [0, 1), got {discard_ratio}")
    input_size = spatial_size(batches[0][0])
    sources = amodel.layout(input_size).sources(source)

    def rolled_out(batch: Batch, index: int, offset: int) -> tuple[torch.Tensor, np.ndarray]:
        images = on_device(loaded, batch)[0]
        layout = amodel.layout(spatial_size(images))
        accumulated = Rollout(head_fusion, discard_ratio, layout.num_prefix_tokens)

        def accumulate(layer: int, attention: torch.Tensor) -> None:
            if layer >= start:
                accumulated.add(attention)

        recording = AttentionCapture(amodel, accumulate).run(images)
        tokens = [layout.source_index(name) for name in sources]
        return (token_maps(accumulated.rows(tokens), layout).float().cpu(),
                predictions(recording.output, len(images)))

    maps, targets = zip(*distributed.map_batches(rolled_out, batches))
    return SaliencyResult(model=loaded.label, images=batches.num_images, method="rollout",
                          maps=torch.cat(maps).numpy(), sources=sources, input_size=input_size,
                          targets=np.concatenate(targets), options={"start_layer": start})


def predictions(output, batch_size: int) -> np.ndarray:
    """The top-1 class per image of a forward output (-1 when it has no logits)."""
    try:
        return output_logits(output).argmax(-1).cpu().numpy()
    except UserError:
        return np.full(batch_size, -1)
