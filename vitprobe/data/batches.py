"""``Batches``: a fixed, re-iterable list of ``(images, labels)`` with where it came from."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np
import torch

Batch = tuple[torch.Tensor, torch.Tensor]
DataLike = Union["Batches", Batch, Iterable[Batch], torch.Tensor]


@dataclass
class Batches(Sequence[Batch]):
    """A fixed set of preprocessed images in batches; iterating yields ``(images, labels)``.

    ``labels_from_model`` is true when the images had no labels and each label is the
    model's own top-1 prediction.
    """

    batches: list[Batch]
    spec: str = "tensors"
    labels_from_model: bool = False
    class_names: list[str] | None = None
    paths: list[str] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index):
        return self.batches[index]

    def __iter__(self) -> Iterator[Batch]:
        return iter(self.batches)

    @property
    def num_images(self) -> int:
        return sum(int(images.shape[0]) for images, _ in self.batches)

    def images(self) -> torch.Tensor:
        """All images in one tensor."""
        return torch.cat([images for images, _ in self.batches])

    def labels(self) -> torch.Tensor:
        """All labels in one tensor."""
        return torch.cat([labels for _, labels in self.batches])

    def to(self, device: torch.device | str) -> Batches:
        moved = [(x.to(device), y.to(device)) for x, y in self.batches]
        return Batches(moved, self.spec, self.labels_from_model, self.class_names, self.paths, self.info)

    def rebatch(self, batch_size: int) -> Batches:
        """The same images in batches of ``batch_size`` (the last may be smaller)."""
        images, labels = self.images(), self.labels()
        batches = [(images[i:i + batch_size], labels[i:i + batch_size])
                   for i in range(0, len(images), batch_size)]
        return Batches(batches, self.spec, self.labels_from_model, self.class_names, self.paths, self.info)


def as_batches(data: DataLike) -> Batches:
    """Accept ``Batches``, one ``(images, labels)`` tuple, any iterable of such tuples, or a
    bare (B, C, H, W) image tensor (one unlabelled batch: labels -1)."""
    if isinstance(data, Batches):
        return data
    if isinstance(data, torch.Tensor):
        if data.dim() != 4:
            raise ValueError(f"images must be (B, C, H, W), got shape {tuple(data.shape)}")
        return Batches([(data, torch.full((data.shape[0],), -1, dtype=torch.long))])
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        return Batches([(data[0], data[1])])
    batches = [(images, labels) for images, labels in data]
    if not batches:
        raise ValueError("no batches: the data is empty")
    return Batches(batches)


def spatial_size(x: torch.Tensor | np.ndarray) -> tuple[int, int]:
    """(height, width) of an image, a batch of images or a map: its last two dimensions."""
    return int(x.shape[-2]), int(x.shape[-1])
