"""``load_data(spec, model, ...)``: batches of ``(images, labels)`` preprocessed for a model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from vitprobe.data.batches import Batch, Batches, DataLike, as_batches
from vitprobe.data.images import find_images, load_images
from vitprobe.data.shapes import CLASS_NAMES, SPLIT_SIZE, SPLITS, render_shapes, subset_indices
from vitprobe.errors import UserError
from vitprobe.models.loaded import LoadedModel, as_loaded
from vitprobe.models.module_state import module_device

__all__ = ["Batch", "Batches", "DataLike", "as_batches", "load_data"]

DEFAULT_NUM_IMAGES = 256


def load_data(
    spec: str | list[str],
    model: LoadedModel | nn.Module,
    num_images: int | None = None,
    *,
    class_names: str | Path | list[str] | None = None,
    batch_size: int = 64,
    seed: int = 0,
    input_size: tuple[int, int] | int | None = None,
    device: torch.device | str | None = None,
) -> Batches:
    """Images for ``model``: timm evaluation preprocessing, no augmentation.

    ``spec`` is ``"shapes"`` (the embedded dataset's test split, rendered at the model's input
    size; ``"shapes:train"`` its training split, the images the demo zoo was trained on), a
    folder with one subfolder per class, or unlabelled images (a folder, glob, file or list
    of files), whose labels are then the model's own predictions (``labels_from_model``).
    A deterministic subset of ``num_images`` is chosen by ``seed`` (all images of a folder
    when ``num_images`` is None). ``input_size`` (H, W) overrides the model's resolution.
    Images have the model's channels (1-channel models get grayscale, ITU-R 601 luma).
    Class folders are matched to the model's classes by :func:`class_indices`.
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

    if isinstance(spec, str) and spec.split(":")[0] == "shapes":
        split = shapes_split(spec)
        if (num_images or 0) > SPLIT_SIZE:
            raise UserError(f"--num-images {num_images} is more than the {SPLIT_SIZE} images of "
                            f"each shapes split")
        indices = subset_indices(num_images or DEFAULT_NUM_IMAGES, seed)
        rendered = render_shapes(indices, size=tuple(config["input_size"][1:]), split=split)
        mean, std = loaded.normalisation()
        images = to_channels(rendered.images, int(config["input_size"][0]))
        images, labels = (images - mean) / std, rendered.labels
        names_out: list[str] | None = list(CLASS_NAMES)
        paths, from_model = None, False
        info = {"split": split, "indices_seed": seed}
    else:
        paths_all, found_labels, folders = find_images(spec)
        labels_all: list[int] | None = None
        names_out, info = None, {}
        if found_labels is not None and folders is not None:
            mapping, info, names = class_indices(folders, loaded, class_names)
            labels_all = [mapping[folders[label]] for label in found_labels]
            names_out = names or folders
        chosen = _subset(len(paths_all), num_images, seed)
        paths = [str(paths_all[i]) for i in chosen]
        images = load_images([Path(p) for p in paths], config)
        from_model = labels_all is None
        labels = (_predict(loaded, images, batch_size) if labels_all is None
                  else torch.tensor([labels_all[i] for i in chosen], dtype=torch.long))
    if device is not None:
        images, labels = images.to(device), labels.to(device)
    batches = [(images[i:i + batch_size], labels[i:i + batch_size])
               for i in range(0, len(images), batch_size)]
    name = spec if isinstance(spec, str) else f"{len(spec)} files"
    return Batches(batches, spec=name, labels_from_model=from_model, class_names=names_out,
                   paths=paths, info={**info, "resolution": list(config["input_size"][1:])})


def shapes_split(spec: str) -> str:
    """The split a ``shapes[:SPLIT]`` spec names (``test`` when none)."""
    _, _, split = spec.partition(":")
    if split not in ("", *SPLITS):
        raise UserError(f"unknown shapes split {split!r} in {spec!r}; choose shapes, "
                        + ", ".join(f"shapes:{name}" for name in SPLITS))
    return split or "test"


def _subset(total: int, num_images: int | None, seed: int) -> list[int]:
    if num_images is None or num_images >= total:
        return list(range(total))
    return sorted(np.random.default_rng(seed).choice(total, size=num_images, replace=False).tolist())


@torch.no_grad()
def _predict(loaded: LoadedModel, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    device = module_device(loaded.module)
    return torch.cat([loaded.logits(loaded.module(images[i:i + batch_size].to(device))).argmax(-1).cpu()
                      for i in range(0, len(images), batch_size)])


def rgb_pixels(images: torch.Tensor, model: LoadedModel) -> torch.Tensor:
    """``model``'s preprocessed (B, C, H, W) images back in [0, 1] as RGB, in their dtype, on the
    CPU (a 1-channel model's gray repeated): the inverse of its normalisation."""
    mean, std = model.normalisation(images.dtype)
    pixels = (images.detach().cpu() * std + mean).clamp(0, 1)
    return pixels.expand(-1, 3, -1, -1) if pixels.shape[1] == 1 else pixels


def to_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """RGB images in [0, 1] with ``channels`` channels: 1 gives ITU-R 601 luma, as PIL's ``L``."""
    if channels == 3:
        return images
    if channels == 1:
        weights = torch.tensor([0.299, 0.587, 0.114], dtype=images.dtype).view(1, 3, 1, 1)
        return (images * weights).sum(1, keepdim=True)
    raise UserError(f"images can be made with 1 or 3 channels, not {channels} (--in-chans)")


def _names(loaded: LoadedModel, class_names: str | Path | list[str] | None) -> list[str] | None:
    """The model's class names in output order: from ``class_names`` (a list or a file with one
    name a line), else the model's own."""
    if class_names is None:
        return loaded.class_names
    if isinstance(class_names, list):
        return class_names
    path = Path(class_names)
    try:
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"cannot read --class-names {path}: {error}") from None
    if loaded.num_classes is not None and len(names) != loaded.num_classes:
        raise UserError(f"--class-names {path} has {len(names)} names, but {loaded.label} has "
                        f"{loaded.num_classes} classes")
    return names


def class_indices(folders: list[str], loaded: LoadedModel,
                  class_names: str | Path | list[str] | None
                  ) -> tuple[dict[str, int], dict, list[str] | None]:
    """The model's class index for each class folder, how it was found, and the model's class
    names (read from ``class_names`` or the model's own, None when unknown).

    With ``class_names`` (or the model's own names) covering every folder, folders map by name;
    folders named by ImageNet synset ids (``n01440764``) map onto a 1000-class model by timm's
    ``ImageNetInfo``; otherwise the folder count must equal the model's class count and the
    sorted folders are classes 0, 1, ... (torchvision's ``ImageFolder`` rule).
    """
    names = _names(loaded, class_names)
    classes = loaded.num_classes
    if names is not None and set(folders) <= set(names):
        index = {name: i for i, name in enumerate(names)}
        return {f: index[f] for f in folders}, {"class_mapping": "by name"}, names
    if class_names is not None:
        missing = sorted(set(folders) - set(names or []))
        raise UserError(f"class folders {', '.join(missing[:5])} are not among the names in "
                        f"--class-names {class_names}")
    if classes == 1000 and all(len(f) == 9 and f[0] == "n" and f[1:].isdigit() for f in folders):
        from timm.data import ImageNetInfo

        synsets = ImageNetInfo().label_names()
        if set(folders) <= set(synsets):
            index = {s: i for i, s in enumerate(synsets)}
            return {f: index[f] for f in folders}, {"class_mapping": "ImageNet synsets"}, names
    if classes is not None and len(folders) != classes:
        own = f" (its own names begin {', '.join(names[:3])})" if names else ""
        raise UserError(
            f"the data has {len(folders)} class folders but {loaded.label} has {classes} classes{own}: "
            "folders are classes by sorted position (torchvision's ImageFolder rule: every class "
            "folder counts, an empty one too), which needs one folder per class; add the missing "
            "class folders (empty ones keep the positions), or pass --class-names FILE (the "
            "model's class names, one a line, in its output order) to match folders by name")
    return {f: i for i, f in enumerate(folders)}, {"class_mapping": "sorted folders"}, names
