"""``LoadedModel``: a module in eval mode plus what the analyses need to know about it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

Family = Literal["vit", "cnn", "other"]

IMAGENET_DATA_CONFIG: dict[str, Any] = {
    "input_size": (3, 224, 224),
    "interpolation": "bicubic",
    "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225),
    "crop_pct": 0.875,
    "crop_mode": "center",
}


@dataclass
class LoadedModel:
    """A model ready for analysis.

    ``module`` is in eval mode. ``data_config`` follows timm's ``resolve_data_config``
    (``input_size`` as (C, H, W), ``interpolation``, ``mean``, ``std``, ``crop_pct``,
    ``crop_mode``). For a ViT, ``num_prefix_tokens`` counts the class, distillation and
    register tokens that precede the patch tokens, and ``patch_size`` is (height, width).
    """

    module: nn.Module
    label: str
    spec: str
    family: Family
    data_config: dict[str, Any]
    num_prefix_tokens: int = 0
    patch_size: tuple[int, int] | None = None
    num_classes: int | None = None
    class_names: list[str] | None = None
    checkpoint: str | None = None
    checkpoint_sha256: str | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) of the model's evaluation input."""
        _, h, w = self.data_config["input_size"]
        return int(h), int(w)

    def grid_size(self, input_size: tuple[int, int] | None = None) -> tuple[int, int]:
        """The patch grid (rows, columns) of a ViT for an input of ``input_size`` (H, W).

        Uses ``patch_embed.dynamic_feat_size`` when the timm model has one, so padding and
        non-square inputs give the grid the model really builds.
        """
        if self.patch_size is None:
            raise ValueError(f"{self.label} is not a ViT: it has no patch grid")
        h, w = input_size or self.input_size
        patch_embed = getattr(self.module, "patch_embed", None)
        if patch_embed is not None and hasattr(patch_embed, "dynamic_feat_size") and (
            getattr(patch_embed, "dynamic_img_pad", False)
        ):
            rows, cols = patch_embed.dynamic_feat_size((h, w))
            return int(rows), int(cols)
        ph, pw = self.patch_size
        return h // ph, w // pw

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.module.parameters())

    def to(self, device: torch.device | str) -> "LoadedModel":
        self.module.to(device)
        return self


def module_device(module: nn.Module) -> torch.device:
    """The device of ``module``'s first parameter (CPU for a module without parameters)."""
    parameter = next(module.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _pair(value: Any) -> tuple[int, int]:
    if isinstance(value, (tuple, list)):
        return int(value[0]), int(value[-1])
    return int(value), int(value)


def detect_family(module: nn.Module) -> Family:
    """``vit`` for patch-token transformers, ``cnn`` for convolutional nets, else ``other``."""
    patch_embed = getattr(module, "patch_embed", None)
    if patch_embed is not None and hasattr(module, "blocks") and hasattr(module, "num_prefix_tokens"):
        return "vit"
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    attention = [m for m in module.modules() if isinstance(m, nn.MultiheadAttention)
                 or type(m).__name__.endswith("Attention")]
    patchify = any(type(m).__name__ == "PatchEmbed" for m in module.modules())
    if convs and not attention and not patchify:
        return "cnn"
    return "other"


def timm_data_config(module: nn.Module) -> dict[str, Any]:
    """timm's evaluation preprocessing for ``module`` (ImageNet defaults for non-timm modules)."""
    if getattr(module, "pretrained_cfg", None) or getattr(module, "default_cfg", None):
        from timm.data import resolve_data_config

        config = resolve_data_config({}, model=module)
        config["input_size"] = tuple(int(v) for v in config["input_size"])
        return dict(config)
    return dict(IMAGENET_DATA_CONFIG)


def vit_layout(module: nn.Module) -> tuple[int, tuple[int, int]]:
    """(number of prefix tokens, patch size) of a timm ViT."""
    return int(module.num_prefix_tokens), _pair(module.patch_embed.patch_size)


def as_loaded(
    model: nn.Module | LoadedModel,
    label: str | None = None,
    data_config: dict[str, Any] | None = None,
) -> LoadedModel:
    """Wrap a plain module so every analysis can take either; a ``LoadedModel`` passes through.

    The family and token layout are read off the module (timm attributes); the input
    configuration comes from timm's ``pretrained_cfg`` when present.
    """
    if isinstance(model, LoadedModel):
        return model
    family = detect_family(model)
    prefix, patch = vit_layout(model) if family == "vit" else (0, None)
    config = data_config or timm_data_config(model)
    if family == "vit" and data_config is None:
        # the patch embedding knows the resolution the model was built for
        img_size = getattr(model.patch_embed, "img_size", None)
        if img_size is not None:
            h, w = _pair(img_size)
            config["input_size"] = (config["input_size"][0], h, w)
    num_classes = getattr(model, "num_classes", None)
    return LoadedModel(
        module=model.eval(),
        label=label or type(model).__name__,
        spec=label or type(model).__name__,
        family=family,
        data_config=config,
        num_prefix_tokens=prefix,
        patch_size=patch,
        num_classes=int(num_classes) if num_classes is not None else None,
    )

