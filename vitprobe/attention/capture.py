"""Post-softmax attention of every layer during one ordinary forward pass, and raw maps.

The hooks only read tensors the model computes anyway (see :mod:`vitprobe.models.attention_sites`),
so timm's fused attention stays on, no flag is touched, and the model's outputs are
bit-identical with and without capture. Every layer must report exactly once per forward:
a model whose attention bypasses the hooked modules fails loudly instead of silently
giving fewer layers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch
from torch import nn

from vitprobe import distributed
from vitprobe.attention.inputs import ImagesLike, on_device, prepared
from vitprobe.data.batches import Batch, spatial_size
from vitprobe.errors import UserError
from vitprobe.models.attention_sites import AttentionModel, SiteListener, ToAttentionGrad, mha_math_path
from vitprobe.models.loaded import LoadedModel
from vitprobe.models.token_layout import TokenLayout
from vitprobe.result import Result, analysis

if TYPE_CHECKING:
    from matplotlib.figure import Figure

OnAttention = Callable[[int, torch.Tensor], None]


@dataclass
class Recording:
    """What one forward pass left behind: the layout, the output, and, when gradients were
    asked for, per layer a tensor in the autograd graph and how its gradient becomes dL/dA."""

    layout: TokenLayout
    output: object = None
    gradient_sources: dict[int, tuple[torch.Tensor, ToAttentionGrad]] = field(default_factory=dict)


class AttentionCapture(SiteListener):
    """Hooks on every attention site of ``model`` that call ``on_attention(layer, A)`` with
    A = softmax(q k^T * scale) of shape (B, heads, N, N) as each layer runs.

    With ``keep_for_gradients`` each layer also leaves a gradient source, so that dL/dA can be
    formed after the forward pass (:func:`attention_gradients`).
    """

    def __init__(self, model: AttentionModel, on_attention: OnAttention,
                 keep_for_gradients: bool = False) -> None:
        self.model = model
        self.on_attention = on_attention
        self.keep_for_gradients = keep_for_gradients
        self._seen: list[int] = []
        self.recording: Recording | None = None

    def run(self, images: torch.Tensor) -> Recording:
        """One forward pass of the model on ``images`` with every layer captured."""
        self.recording = Recording(layout=self.model.layout(spatial_size(images)))
        self._seen = []
        handles = [handle for site in self.model.sites for handle in site.register(self)]
        try:
            with mha_math_path():
                self.recording.output = self.model.module(images)
        finally:
            for handle in handles:
                handle.remove()
        if self._seen != list(range(self.model.num_layers)):
            raise UserError(
                f"{self.model.label}: captured attention from {len(set(self._seen))} of "
                f"{self.model.num_layers} layers (order {self._seen}); its attention does not run "
                "through the modules vitprobe reads")
        return self.recording

    @property
    def _recording(self) -> Recording:
        if self.recording is None:
            raise RuntimeError("attention arrived outside AttentionCapture.run")
        return self.recording

    def attention(self, index: int, attention: torch.Tensor) -> None:
        self._recording.layout.check(attention.shape[-1])
        self._seen.append(index)
        self.on_attention(index, attention)

    def gradient_source(self, index: int, tensor: torch.Tensor, to_attention_grad: ToAttentionGrad) -> None:
        self._recording.gradient_sources[index] = (tensor, to_attention_grad)


def attention_gradients(recording: Recording, objective: torch.Tensor) -> dict[int, torch.Tensor]:
    """dObjective/dA for every layer, paired by layer index: (B, heads, N, N)."""
    layers = sorted(recording.gradient_sources)
    grads = torch.autograd.grad(objective, [recording.gradient_sources[i][0] for i in layers])
    return {layer: recording.gradient_sources[layer][1](grad) for layer, grad in zip(layers, grads)}


def select(indices: Sequence[int] | None, count: int, what: str) -> list[int]:
    """Chosen layer or head indices (negative counts from the end); all when None."""
    if indices is None:
        return list(range(count))
    chosen = []
    for index in indices:
        if not -count <= index < count:
            raise UserError(f"{what} {index} does not exist: the model has {count} {what}s")
        chosen.append(index % count)
    return chosen


@dataclass(kw_only=True)
class AttentionMapsResult(Result):
    """Post-softmax attention of the chosen layers and heads for every image.

    ``weights[i]`` is layer ``layers[i]``: (images, len(heads), N, N), row = query token,
    column = key token, in the model's token order (see ``layout``).
    """

    layers: list[int]
    heads: list[int]
    layout: TokenLayout
    weights: np.ndarray

    INDEX: ClassVar[tuple[str, ...]] = ("metric", "layer", "head")
    REPORTED: ClassVar[tuple[str, ...]] = ()  # per layer and head: a figure's numbers, not a table's

    def query_map(self, layer: int, head: int, query: tuple[int, int] | str = "cls") -> np.ndarray:
        """(images, rows, cols): where one query (a patch (row, col), ``"cls"`` or ``"dist"``)
        attends among the patches, for one captured layer and head."""
        layout = self.layout
        if isinstance(query, str):
            token = layout.source_index(query)
        else:
            row, col = query
            if not (0 <= row < layout.grid[0] and 0 <= col < layout.grid[1]):
                raise UserError(f"query patch {query} is outside the {layout.grid} grid")
            token = layout.num_prefix_tokens + row * layout.grid[1] + col
        rows = self.weights[self.layers.index(layer), :, self.heads.index(head), token]
        return rows[:, layout.num_prefix_tokens:].reshape(-1, *layout.grid)

    def rows(self) -> list[dict]:
        """Per layer and head, averaged over images: the mass patch queries put on prefix
        tokens (``prefix_attention``) and the entropy of attention rows in nats."""
        p = self.layout.num_prefix_tokens
        weights = self.weights.astype(np.float64)
        prefix_mass = weights[:, :, :, p:, :p].sum(-1).mean(axis=(1, 3))
        entropy = -(weights * np.log(np.clip(weights, 1e-30, None))).sum(-1).mean(axis=(1, 3))
        rows = []
        for i, layer in enumerate(self.layers):
            for j, head in enumerate(self.heads):
                rows.append({"metric": "prefix_attention", "layer": layer, "head": head,
                             "value": float(prefix_mass[i, j])})
                rows.append({"metric": "attention_entropy", "layer": layer, "head": head,
                             "value": float(entropy[i, j])})
        return rows

    def plot(self, image: np.ndarray | None = None, query: tuple[int, int] | None = None) -> Figure:
        """Raw attention of the ``query`` patch (default: the centre one) of the first image, per
        layer and head, over ``image`` ((3, H, W) in [0, 1]; default: a grey canvas)."""
        from vitprobe.attention.figures import raw_attention_figure

        rows, cols = self.layout.grid
        height, width = rows * self.layout.patch_size[0], cols * self.layout.patch_size[1]
        canvas = image if image is not None else np.full((3, height, width), 0.5)
        return raw_attention_figure(self, canvas, query or (rows // 2, cols // 2))

@analysis
@torch.no_grad()
def attention_maps(model: nn.Module | LoadedModel, data: ImagesLike, *,
                   layers: Sequence[int] | None = None,
                   heads: Sequence[int] | None = None) -> AttentionMapsResult:
    """Raw post-softmax attention (Dosovitskiy et al. 2020) of every image for the chosen
    layers and heads (default all), captured in batches from the model's own forward pass.

    Works with timm ViTs (fused attention or not, class/distillation/register tokens, any
    input size with ``dynamic_img_size``) and transformers ViT/DeiT. All images must have one
    size (one token layout).
    """
    loaded, batches = prepared(model, data)
    amodel = loaded.attention
    chosen_layers = select(layers, amodel.num_layers, "layer")
    chosen_heads = select(heads, amodel.num_heads, "head")
    layout = amodel.layout(spatial_size(batches[0][0]))

    def captured(batch: Batch, index: int, offset: int) -> np.ndarray:
        kept: dict[int, torch.Tensor] = {}

        def keep(layer: int, attention: torch.Tensor) -> None:
            if layer in chosen_layers:
                kept[layer] = attention[:, chosen_heads].float().cpu()

        recording = AttentionCapture(amodel, keep).run(on_device(loaded, batch)[0])
        if recording.layout != layout:
            raise UserError("attention_maps needs images of one size (one token layout)")
        return torch.stack([kept[layer] for layer in chosen_layers]).numpy()

    per_batch = distributed.map_batches(captured, batches)
    return AttentionMapsResult(model=loaded.label, images=batches.num_images, layers=chosen_layers, heads=chosen_heads,
                         layout=layout, weights=np.concatenate(per_batch, axis=1))
