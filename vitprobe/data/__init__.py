"""``load_data(spec, model, ...)``: batches of ``(images, labels)`` preprocessed for a model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from vitprobe.data.batches import Batch, Batches, DataLike, as_batches
from vitprobe.data.images import find_images, load_images
from vitprobe.data.shapes import CLASS_NAMES, render_shapes, subset_indices
from vitprobe.errors import UserError
from vitprobe.models.loaded import LoadedModel, as_loaded, module_device

__all__ = ["Batch", "Batches", "DataLike", "as_batches", "load_data"]

DEFAULT_NUM_IMAGES = 256


def load_data(
    spec: str | list[str],
    model: LoadedModel | nn.Module,
    num_images: int | None = None,
    batch_size: int = 64,
    seed: int = 0,
    input_size: tuple[int, int] | int | None = None,
    device: torch.device | str | None = None,
) -> Batches:
    """Images for ``model``: timm evaluation preprocessing, no augmentation.

    ``spec`` is ``"shapes"`` (the embedded dataset, rendered at the model's input size), a
    folder with one subfolder per class, or unlabelled images (a folder, glob, file or list
    of files), whose labels are then the model's own predictions (``labels_from_model``).
    A deterministic subset of ``num_images`` is chosen by ``seed`` (all images of a folder
    when ``num_images`` is None). ``input_size`` (H, W) overrides the model's resolution.
    """
    loaded = as_loaded(model)
    config = dict(loaded.data_config)
    if input_size is not None:
        h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
        config["input_size"] = (config["input_size"][0], int(h), int(w))
    if num_images is not None and num_images < 1:
        raise UserError(f"--num-images must be positive, got {num_images}")
    if batch_size < 1:
        raise UserError(f"--batch-size must be positive, got {batch_size}")

    if spec == "shapes":
        indices = subset_indices(num_images or DEFAULT_NUM_IMAGES, seed)
        rendered = render_shapes(indices, size=tuple(config["input_size"][1:]), split="test")
        mean = torch.tensor(config["mean"]).view(1, -1, 1, 1)
        std = torch.tensor(config["std"]).view(1, -1, 1, 1)
        images, labels = (rendered.images - mean) / std, rendered.labels
        class_names, paths, from_model = list(CLASS_NAMES), None, False
        info = {"split": "test", "indices_seed": seed}
    else:
        paths_all, labels_all, class_names = find_images(spec)
        chosen = _subset(len(paths_all), num_images, seed)
        paths = [str(paths_all[i]) for i in chosen]
        images = load_images([Path(p) for p in paths], config)
        from_model = labels_all is None
        labels = (_predict(loaded.module, images, batch_size) if from_model
                  else torch.tensor([labels_all[i] for i in chosen], dtype=torch.long))
        info = {}
    if device is not None:
        images, labels = images.to(device), labels.to(device)
    batches = [(images[i:i + batch_size], labels[i:i + batch_size])
               for i in range(0, len(images), batch_size)]
    name = spec if isinstance(spec, str) else f"{len(spec)} files"
    return Batches(batches, spec=name, labels_from_model=from_model, class_names=class_names,
                   paths=paths, info={**info, "resolution": list(config["input_size"][1:])})


def _subset(total: int, num_images: int | None, seed: int) -> list[int]:
    if num_images is None or num_images >= total:
        return list(range(total))
    return sorted(np.random.default_rng(seed).choice(total, size=num_images, replace=False).tolist())


@torch.no_grad()
def _predict(module: nn.Module, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    device = module_device(module)
    return torch.cat([module(images[i:i + batch_size].to(device)).argmax(-1).cpu()
                      for i in range(0, len(images), batch_size)])
