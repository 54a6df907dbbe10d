"""The feature stages of any CNN, found by tracing its spatial outputs up to global pooling.

A stage is the outermost module that finishes last at one spatial resolution: for a torchvision
or timm ResNet ``act1``/``relu``, ``layer1`` ... ``layer4``; for a MobileNet or ConvNeXt the
blocks of ``features`` where the resolution drops; for a CIFAR ResNet ``layer1`` ...
``layer3``, or the last block at each resolution when all its blocks sit in one
``nn.Sequential``; for a plain ``nn.Sequential`` its indices. A container of earlier stages
(``features``) is never a stage itself, so that each stage's parameters are its own. One forward pass on a zero image records,
in execution order, every module output that is a (B, C, H, W) map whose stride is the same
along both axes (channels-last tensors inside ConvNeXt blocks are not maps); recording stops at
the first pooling to 1x1 or the first output that is no longer a map. A model whose own output
is a map (a feature extractor) has itself, ``""``, as its last stage.
Among the maps of one resolution the stage is the module that finishes last before the block
that goes on to the next resolution begins (the model's own blocks when several share a
resolution, as a dilated network's layer3 and layer4); maps after which the network returns to
larger maps (a squeeze-excitation's 1x1 maps) are not stages, and when
some stages are blocks, single layers (a stem's activation) are not stages either; nor is a
module called more than once per forward (the captum tutorial's shared pooling layer).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeGuard

import torch
from torch import nn

from vitprobe.models.module_state import eval_mode

POOLING = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.AvgPool2d, nn.MaxPool2d, nn.Flatten)


@dataclass(frozen=True)
class Stage:
    """A module whose output is a (C, H, W) feature map, ``stride`` input pixels per position."""

    name: str
    channels: int
    grid: tuple[int, int]
    stride: int


def _is_map(output: object, input_size: tuple[int, int]) -> TypeGuard[torch.Tensor]:
    if not isinstance(output, torch.Tensor) or output.dim() != 4:
        return False
    h, w = int(output.shape[2]), int(output.shape[3])
    return 0 < h <= input_size[0] and 0 < w <= input_size[1] and (
        round(input_size[0] / h) == round(input_size[1] / w))


def _has_children(module: nn.Module) -> bool:
    return any(True for _ in module.children())


@torch.no_grad()
def feature_stages(module: nn.Module, input_shape: tuple[int, int, int]) -> list[Stage]:
    """The stages of ``module`` for inputs of ``input_shape`` (C, H, W), in forward order."""
    size = (int(input_shape[1]), int(input_shape[2]))
    depth = {m: name.count(".") + 1 if name else 0 for name, m in module.named_modules()}
    names = {m: name for name, m in module.named_modules()}
    finished: list[tuple[nn.Module, tuple[int, ...], tuple[int, int] | None]] = []  # output, input grid
    pooled = False

    def on_output(sub, inputs, output):
        nonlocal pooled
        if pooled:
            return
        if not _is_map(output, size) or (isinstance(sub, POOLING) and output.shape[-2:] == (1, 1)):
            pooled = sub is not module and bool(finished) and depth[sub] <= min(depth[m] for m, _, _ in finished)
            return
        source = inputs[0] if inputs else None
        grid = (int(source.shape[-2]), int(source.shape[-1])) if _is_map(source, size) else None
        finished.append((sub, tuple(output.shape[1:]), grid))

    handles = [sub.register_forward_hook(on_output) for sub in module.modules()]
    try:
        parameter = next(module.parameters(), None)
        zeros = (torch.zeros(1, *input_shape) if parameter is None
                 else torch.zeros(1, *input_shape, device=parameter.device, dtype=parameter.dtype))
        with eval_mode(module):
            module(zeros)
    finally:
        for handle in handles:
            handle.remove()
    calls: dict[nn.Module, int] = {}
    for sub, _, _ in finished:
        calls[sub] = calls.get(sub, 0) + 1
    groups: dict[tuple[int, int], list[tuple[int, nn.Module, int]]] = {}
    for order, (sub, shape, _) in enumerate(finished):
        if calls[sub] > 1:
            continue  # a module applied twice (a shared pooling layer) has no single output
        groups.setdefault((shape[1], shape[2]), []).append((order, sub, shape[0]))
    trunk = [grid for grid, entries in groups.items()
             if not any(shape[1] * shape[2] > grid[0] * grid[1] for _, shape, _ in finished[entries[-1][0] + 1:])]
    stages: list[Stage] = []
    for index, grid in enumerate(trunk):  # other grids: side branches the trunk comes back from (SE's 1x1)
        entries = groups[grid]
        if index + 1 < len(trunk):  # the block that goes on to the next grid is not part of this stage
            going = _transition(finished, grid, trunk[index + 1], depth, module)
            if going is not None:
                entries = [e for e in entries if e[1] is not going and not names[e[1]].startswith(f"{names[going]}.")]
        # a container of earlier stages (MobileNet's ``features``) is not a stage of its own
        entries = [e for e in entries if not any(stage.name.startswith(f"{names[e[1]]}.") for stage in stages)]
        if not entries:
            continue
        # the model's own blocks at that grid (a dilated network's layer3 and layer4 share one),
        # else the module that finishes last there: an outer module's hook fires after its
        # children's, so that is the outermost one, also among blocks inside one container
        own_blocks = [(sub, channels) for _, sub, channels in entries if depth[sub] == 1 and _has_children(sub)]
        chosen = own_blocks or [(entries[-1][1], entries[-1][2])]
        stages += [Stage(names[sub], channels, grid, round(size[0] / grid[0])) for sub, channels in chosen]
    blocks = [stage for stage in stages if _has_children(module.get_submodule(stage.name))]
    return blocks or stages


def _transition(finished: list[tuple[nn.Module, tuple[int, ...], tuple[int, int] | None]],
                grid: tuple[int, int], following: tuple[int, int], depth: dict[nn.Module, int],
                root: nn.Module) -> nn.Module | None:
    """The outermost module that takes ``grid`` maps in and gives ``following`` maps out (the
    strided block, or the pooling, between two stages)."""
    going = [sub for sub, shape, source in finished
             if sub is not root and source == grid and tuple(shape[1:]) == following]
    return min(going, key=lambda sub: depth[sub]) if going else None
