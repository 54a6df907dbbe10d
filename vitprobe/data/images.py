"""Image files on disk: an ImageNet-style class folder, or unlabelled files, folders and globs."""

from __future__ import annotations

import glob
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from vitprobe.errors import UserError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def find_images(spec: str | list[str]) -> tuple[list[Path], list[int] | None, list[str] | None]:
    """Resolve a data spec to image paths, labels and class names.

    A folder whose subfolders hold images is a labelled dataset (class index = sorted
    subfolder order); a folder of images, a glob, one file or a list of files is unlabelled
    (labels and class names are ``None``).
    """
    if isinstance(spec, (list, tuple)):
        paths = [Path(p) for p in spec]
        for path in paths:
            if not path.is_file():
                raise UserError(f"image file not found: {path}")
        return paths, None, None
    if any(ch in spec for ch in "*?[") and not Path(spec).exists():
        paths = sorted(Path(p) for p in glob.glob(spec, recursive=True) if _is_image(Path(p)))
        if not paths:
            raise UserError(f"no image files match {spec!r}")
        return paths, None, None
    root = Path(spec)
    if root.is_file():
        return [root], None, None
    if not root.is_dir():
        raise UserError(f"data not found: {spec!r} is neither 'shapes', a folder, a glob nor a file")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if classes:
        paths, labels = [], []
        for label, name in enumerate(classes):
            files = sorted(p for p in (root / name).rglob("*") if _is_image(p))
            paths += files
            labels += [label] * len(files)
        if not paths:
            raise UserError(f"no images in the class folders of {root}")
        return paths, labels, classes
    paths = sorted(p for p in root.iterdir() if _is_image(p))
    if not paths:
        raise UserError(f"no images in folder {root}")
    return paths, None, None


def _eight_bit(image: Image.Image) -> Image.Image:
    """A 16- or 32-bit integer grayscale image (``I;16``, ``I``) scaled to 8 bits: PIL's own
    conversion clips such values at 255 instead of scaling them."""
    values = np.asarray(image, dtype=np.float64)
    top = 65535.0 if image.mode.startswith("I;16") or values.max() <= 65535 else float(values.max())
    return Image.fromarray(np.clip(np.rint(values * 255.0 / top), 0, 255).astype(np.uint8), mode="L")


def read_image(path: Path, channels: int = 3) -> Image.Image:
    """Open an image as RGB, or as grayscale (``L``) for 1-channel models: palette and RGBA
    images are composited on white first, 16-bit grayscale is scaled (not clipped) to 8 bits;
    a clear error if unreadable or larger than PIL's decompression-bomb limit."""
    try:
        with Image.open(path) as opened:
            opened.load()
            image: Image.Image = opened
            if image.mode.startswith("I"):
                image = _eight_bit(image)
            if image.mode == "RGBA" or (image.mode == "P" and "transparency" in image.info):
                rgba = image.convert("RGBA")
                canvas = Image.new("RGB", rgba.size, (255, 255, 255))
                canvas.paste(rgba, mask=rgba.split()[-1])
                image = canvas
            return image.convert("L" if channels == 1 else "RGB")
    except Image.DecompressionBombError as error:
        raise UserError(f"refusing image {path}: {error}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise UserError(f"cannot read image {path}: {error}") from None


def load_images(paths: list[Path], data_config: dict) -> torch.Tensor:
    """Read and preprocess images with timm's evaluation transform for ``data_config``."""
    from timm.data import create_transform

    transform = create_transform(
        input_size=tuple(data_config["input_size"]),
        interpolation=data_config.get("interpolation", "bicubic"),
        mean=tuple(data_config["mean"]),
        std=tuple(data_config["std"]),
        crop_pct=data_config.get("crop_pct", 0.875),
        crop_mode=data_config.get("crop_mode", "center"),
        is_training=False,
    )
    channels = int(data_config["input_size"][0])
    if channels not in (1, 3):
        raise UserError(f"images can be read with 1 or 3 channels, not {channels} (--in-chans)")
    return torch.stack([transform(read_image(path, channels)) for path in paths])
