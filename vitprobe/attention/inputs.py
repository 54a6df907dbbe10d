"""What every attention analysis accepts: a model or ``LoadedModel``; a tensor or batches."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from vitprobe.data.batches import Batches, DataLike, as_batches
from vitprobe.models.loaded import LoadedModel, as_loaded

ImagesLike = torch.Tensor | DataLike


def image_batches(data: ImagesLike) -> Batches:
    """A bare (B, C, H, W) tensor becomes one unlabelled batch (labels -1); the rest as
    :func:`vitprobe.data.batches.as_batches`."""
    if isinstance(data, torch.Tensor):
        if data.dim() != 4:
            raise ValueError(f"images must be (B, C, H, W), got shape {tuple(data.shape)}")
        return Batches([(data, torch.full((data.shape[0],), -1, dtype=torch.long))])
    return as_batches(data)


def model_device(module: nn.Module) -> torch.device:
    parameter = next(module.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def prepared(model: nn.Module | LoadedModel, data: ImagesLike) -> tuple[LoadedModel, Batches]:
    """The loaded model and the data as batches."""
    return as_loaded(model), image_batches(data)


def device_batches(loaded: LoadedModel, batches: Batches) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Each batch moved to the model's device."""
    device = model_device(loaded.module)
    for images, labels in batches:
        yield images.to(device), labels.to(device)


Target = int | str | torch.Tensor | None


def resolve_targets(target: Target, labels: torch.Tensor, logits: torch.Tensor,
                    offset: int = 0) -> torch.Tensor:
    """The class to explain for each image of a batch: ``None`` the model's prediction,
    ``"label"`` the data's labels, an int that class for every image, a tensor one class per
    image of the whole data (sliced at ``offset``)."""
    if target is None:
        return logits.argmax(-1)
    if isinstance(target, str):
        if target != "label":
            raise ValueError(f"target must be None, 'label', an int or a tensor, got {target!r}")
        if (labels < 0).any():
            raise ValueError("target='label' needs labelled images")
        return labels
    if isinstance(target, int):
        return torch.full_like(labels, target)
    return target[offset:offset + len(labels)].to(labels.device)
