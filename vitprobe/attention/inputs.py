"""What every attention analysis accepts: a model or ``LoadedModel``; a tensor or batches."""

from __future__ import annotations

import torch
from torch import nn

from vitprobe.data.batches import Batch, Batches, DataLike, as_batches
from vitprobe.models.loaded import LoadedModel, as_loaded
from vitprobe.models.module_state import module_device

ImagesLike = DataLike


def prepared(model: nn.Module | LoadedModel, data: ImagesLike) -> tuple[LoadedModel, Batches]:
    """The loaded model and the data as batches."""
    return as_loaded(model), as_batches(data)


def on_device(loaded: LoadedModel, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch's images and labels on the model's device."""
    device = module_device(loaded.module)
    return batch[0].to(device), batch[1].to(device)


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
