"""The outputs of named layers during a forward pass, as tensors the feature analyses read.

A layer's output is a CNN feature map ``(B, C, H, W)``, a token sequence ``(B, T, C)`` (or
``(T, B, C)`` for ``nn.TransformerEncoder`` models built sequence-first), or anything else
(flattened per image). :func:`spatial` turns a ViT's tokens into the map of its patch grid.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

from vitprobe.errors import UserError
from vitprobe.models.loaded import LoadedModel, layer_name


@contextmanager
def taps(loaded: LoadedModel, layers: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Forward hooks on ``layers``: the dict holds each layer's last output, detached, batch
    first (a sequence-first ViT's ``(T, B, C)`` tokens become ``(B, T, C)``)."""
    outputs: dict[str, torch.Tensor] = {}
    sequence_first = loaded.family == "vit" and loaded.attention.sequence_first

    def keep(name: str):
        def hook(module, inputs, output) -> None:
            tensor = output[0] if isinstance(output, (tuple, list)) else output
            if not isinstance(tensor, torch.Tensor):
                raise UserError(f"layer {name!r} of {loaded.label} returns {type(tensor).__name__}, "
                                "not a tensor")
            tensor = tensor.detach()
            outputs[name] = tensor.transpose(0, 1) if sequence_first and tensor.dim() == 3 else tensor
        return hook

    handles = [loaded.resolve_layer(name).register_forward_hook(keep(name)) for name in layers]
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


def spatial(loaded: LoadedModel, output: torch.Tensor, input_size: tuple[int, int],
            name: str) -> torch.Tensor:
    """Layer ``name``'s output as a ``(B, C, H, W)`` map: a CNN's as it is, a ViT's patch tokens
    (its prefix tokens dropped) laid out on the patch grid."""
    if output.dim() == 4:
        return output
    if output.dim() == 3 and loaded.family == "vit":
        rows, cols = loaded.grid_size(input_size)
        patches = output[:, loaded.num_prefix_tokens:, :]
        if patches.shape[1] != rows * cols:
            raise UserError(f"{layer_name(name)} of {loaded.label} has {patches.shape[1]} patch tokens, not the "
                            f"{rows}x{cols} grid of its input")
        return patches.transpose(1, 2).reshape(output.shape[0], output.shape[2], rows, cols)
    raise UserError(f"{layer_name(name)} of {loaded.label} outputs shape {tuple(output.shape)}: "
                    "neither a (B, C, H, W) feature map nor (B, tokens, C) patch tokens")
