"""A model's input configuration (channels, size, mean, std, interpolation, crop) and its source.

The keys follow timm's ``resolve_data_config``: ``input_size`` (C, H, W), ``interpolation``,
``mean``, ``std``, ``crop_pct``, ``crop_mode``. timm models use the test size and crop of their
``pretrained_cfg``, as timm's ``validate.py`` does (``use_test_size=True``). A model with no
configuration of its own gets its channels and size from its layers where they tell (the first
convolution, ``image_size``/``img_size`` attributes, a ViT's position embedding), ImageNet
statistics (0.5 for other channel counts) and a plain resize to that size with no centre crop
(crop 1.0: a CIFAR or MNIST model is evaluated on images already at its size, which a 0.875
crop would enlarge); such a configuration is marked ``inferred``, and the user is told what was
guessed and which flags supply the real one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from torch import nn

from vitprobe.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_SIZE = 224
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
FLAGS = "--input-size, --mean, --std, --interpolation, --crop-pct, --in-chans"


def imagenet_config(channels: int = 3, size: tuple[int, int] = (DEFAULT_SIZE, DEFAULT_SIZE)) -> dict[str, Any]:
    """ImageNet statistics for 3 channels (0.5 otherwise), bicubic, crop 0.875."""
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else ((0.5,) * channels, (0.5,) * channels)
    return {"input_size": (channels, *size), "interpolation": "bicubic", "mean": mean, "std": std,
            "crop_pct": 0.875, "crop_mode": "center"}


def timm_config(module: nn.Module) -> dict[str, Any] | None:
    """timm's evaluation preprocessing at the test size, or None for a module timm did not build."""
    if not (getattr(module, "pretrained_cfg", None) or getattr(module, "default_cfg", None)):
        return None
    from timm.data import resolve_data_config

    config = dict(resolve_data_config({}, model=module, use_test_size=True))
    config["input_size"] = tuple(int(v) for v in config["input_size"])
    return config


def pair(value: Any) -> tuple[int, int]:
    """(height, width) from one number or a pair."""
    if isinstance(value, (tuple, list)):
        return int(value[0]), int(value[-1])
    return int(value), int(value)


def in_channels(module: nn.Module, patch_size: tuple[int, int] | None) -> int | None:
    """Channels of the first layer: a convolution's ``in_channels``, or a linear patch
    embedding's inputs divided by the patch area (vit-pytorch)."""
    for sub in module.modules():
        if isinstance(sub, nn.Conv2d):
            return int(sub.in_channels)
        if isinstance(sub, nn.Linear) and patch_size is not None:
            area = patch_size[0] * patch_size[1]
            return int(sub.in_features // area) if sub.in_features % area == 0 else None
    return None


def position_grid(module: nn.Module, num_prefix_tokens: int | None) -> tuple[int, int] | None:
    """The square patch grid a ViT's learned position embedding was built for, if it has one."""
    for name, parameter in module.named_parameters():
        if "pos" in name.rsplit(".", 1)[-1].lower() and parameter.dim() in (2, 3):
            tokens = int(parameter.shape[-2])
            prefix = num_prefix_tokens if num_prefix_tokens is not None else tokens - math.isqrt(tokens) ** 2
            side = math.isqrt(max(tokens - prefix, 0))
            if side > 0 and side * side == tokens - prefix:
                return side, side
    return None


def inferred_config(module: nn.Module,
                    patch_size: tuple[int, int] | None) -> tuple[dict[str, Any], dict[str, str]]:
    """Channels and size read off the layers, ImageNet (or 0.5) statistics, resize without
    crop; and what was guessed, setting by setting (the keys of :class:`InputOverrides`)."""
    channels = in_channels(module, patch_size)
    size = next((pair(getattr(module, a)) for a in ("image_size", "img_size")
                 if isinstance(getattr(module, a, None), (int, tuple, list))), None)
    if size is None and patch_size is not None:
        grid = position_grid(module, None)
        size = (grid[0] * patch_size[0], grid[1] * patch_size[1]) if grid else None
    config = imagenet_config(channels or 3, size or (DEFAULT_SIZE, DEFAULT_SIZE))
    config["crop_pct"] = 1.0
    guessed = {
        "in_chans": f"{config['input_size'][0]} channel{'s' if config['input_size'][0] != 1 else ''} "
                    + ("read off its first layer" if channels else "by default"),
        "input_size": "{}x{} ".format(*config["input_size"][1:]) + ("read off its layers" if size
                                                                   else "by default"),
        "mean": "default mean and std (ImageNet's for 3 channels, else 0.5)",
        "interpolation": "bicubic resizing",
        "crop_pct": "no centre crop (crop-pct 1.0)",
    }
    return config, guessed



@dataclass(frozen=True)
class InputOverrides:
    """Input settings given by the user; each replaces the model's own where set."""

    input_size: tuple[int, int] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    interpolation: str | None = None
    crop_pct: float | None = None
    in_chans: int | None = None

    def __post_init__(self) -> None:
        if self.input_size is not None and min(self.input_size) < 1:
            raise UserError(f"--input-size must be positive, got {list(self.input_size)}")
        if self.in_chans is not None and self.in_chans < 1:
            raise UserError(f"--in-chans must be positive, got {self.in_chans}")
        if self.crop_pct is not None and not 0 < self.crop_pct <= 1:
            raise UserError(f"--crop-pct must be in (0, 1], got {self.crop_pct}")
        if self.std is not None and not all(s > 0 for s in self.std):
            raise UserError(f"--std must be positive, got {list(self.std)}")
        if self.interpolation is not None and self.interpolation not in INTERPOLATIONS:
            raise UserError(f"--interpolation must be one of {', '.join(INTERPOLATIONS)}")

    @property
    def given(self) -> list[str]:
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]

    def apply(self, config: dict[str, Any]) -> dict[str, Any]:
        """``config`` with these settings in place; mean and std must match the channels."""
        config = dict(config)
        channels, h, w = config["input_size"]
        channels = self.in_chans or channels
        if self.input_size is not None:
            h, w = self.input_size
        config["input_size"] = (int(channels), int(h), int(w))
        for key in ("mean", "std", "interpolation", "crop_pct"):
            if getattr(self, key) is not None:
                config[key] = getattr(self, key)
        for key in ("mean", "std"):
            values = tuple(float(v) for v in config[key])
            if len(values) == 1 and channels > 1:
                values *= channels
            if len(values) != channels:
                default = imagenet_config(channels)[key]
                if key in self.given:
                    raise UserError(f"--{key} has {len(values)} values for {channels} input channels")
                values = default
            config[key] = values
        return config
