"""Object masks for the images of a dataset, preprocessed as the images are (same resize and
crop, nearest neighbour), for judging where a map puts its mass.

The embedded ``shapes`` data renders its masks with its images. For other data a folder holds
one mask image per image, with the image's file name stem (``cat_01.png`` for
``val/cat/cat_01.jpg``); a pixel above half the maximum is inside the object.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vitprobe.data.batches import Batches, spatial_size
from vitprobe.data.images import IMAGE_SUFFIXES, read_image
from vitprobe.data.shapes import render_shapes, subset_indices
from vitprobe.errors import UserError
from vitprobe.models.loaded import LoadedModel


def object_masks(data: Batches, model: LoadedModel, folder: str | Path | None = None) -> np.ndarray:
    """(N, H, W) boolean masks for the images of ``data`` (loaded by :func:`load_data` for
    ``model``): from ``folder``, else rendered for ``shapes``; a UserError otherwise."""
    size = spatial_size(data[0][0])
    if folder is not None:
        return _from_folder(Path(folder), data, model, size)
    if data.spec.split(":")[0] == "shapes" and "split" in data.info:
        indices = subset_indices(data.num_images, data.info["indices_seed"])
        return render_shapes(indices, size=size, split=data.info["split"]).masks.numpy()
    raise UserError(f"no object masks for {data.spec}: give a folder with one mask image per "
                    "image, named as the image (--masks DIR)")


def _from_folder(folder: Path, data: Batches, model: LoadedModel, size: tuple[int, int]) -> np.ndarray:
    from timm.data import create_transform

    if not folder.is_dir():
        raise UserError(f"mask folder {folder} does not exist")
    if not data.paths:
        raise UserError("masks from a folder need images read from files")
    by_stem: dict[str, list[Path]] = {}
    for path in folder.rglob("*"):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            by_stem.setdefault(path.stem, []).append(path)
    config = model.data_config
    transform = create_transform(input_size=(3, *size), interpolation="nearest", mean=(0, 0, 0),
                                 std=(1, 1, 1), crop_pct=config.get("crop_pct", 0.875),
                                 crop_mode=config.get("crop_mode", "center"), is_training=False)
    masks = []
    for image in data.paths:
        found = by_stem.get(Path(image).stem, [])
        if len(found) != 1:
            problem = "no mask" if not found else f"{len(found)} masks"
            raise UserError(f"{problem} named {Path(image).stem}.* in {folder} for {image}")
        mask = transform(read_image(found[0], 3))[0]
        masks.append((mask > 0.5 * mask.max()).numpy())  # an all-black mask: no object
    return np.stack(masks).astype(bool)
