"""Folders in Hugging Face hub layout: timm style (``config.json`` with ``architecture``)
or, with the ``hf`` extra, a transformers ViT, DeiT or DINOv2 image classifier."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vitprobe.errors import UserError
from vitprobe.models import attention_sites as sites
from vitprobe.models.checkpoints import load_strict, read_state_dict, timm_filter
from vitprobe.models.loaded import LoadedModel, describe

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")
TRANSFORMERS_VITS = ("vit", "deit", "dinov2", "dinov2_with_registers")


def read_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.is_file():
        raise UserError(f"{folder} is not a Hugging Face hub folder: it has no config.json")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise UserError(f"cannot parse {path}: {error}") from None


def weights_file(folder: Path) -> Path:
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise UserError(f"no weights in {folder}: expected one of {', '.join(WEIGHT_FILES)}")


def load_timm_folder(folder: Path, config: dict[str, Any], trust_checkpoint: bool) -> tuple[LoadedModel, Path]:
    """A timm model from ``config.json`` (architecture, num_classes, model_args, pretrained_cfg)."""
    import timm

    from vitprobe.models.specs import unknown_architecture

    architecture = config["architecture"]
    if not timm.is_model(architecture):
        raise unknown_architecture(architecture)
    kwargs = dict(config.get("model_args") or {})
    if "num_classes" in config:
        kwargs["num_classes"] = config["num_classes"]
    module = timm.create_model(architecture, pretrained=False,
                               pretrained_cfg_overlay=config.get("pretrained_cfg") or {}, **kwargs)
    path = weights_file(folder)
    load_strict(module, timm_filter(module, read_state_dict(path, trust_checkpoint)), str(path))
    loaded = describe(module.eval(), label=folder.name)
    loaded.class_names = config.get("label_names")
    return loaded, path


class TransformersClassifier(nn.Module):
    """A transformers image classifier whose ``forward(images)`` returns plain logits.

    The wrapped model stays reachable as ``.hf_model`` (for ``output_attentions``).
    """

    def __init__(self, hf_model: nn.Module) -> None:
        super().__init__()
        self.hf_model = hf_model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.hf_model(pixel_values=images).logits


def load_transformers_folder(folder: Path, config: dict[str, Any]) -> tuple[LoadedModel, Path]:
    """A transformers ViT / DeiT classifier from a local folder, offline, eager attention."""
    try:
        from transformers import AutoModelForImageClassification
    except ImportError:
        raise UserError(f"{folder} is a transformers folder: install the 'hf' extra "
                        "(pip install 'vitprobe[hf]')") from None
    model_type = config.get("model_type")
    if model_type not in TRANSFORMERS_VITS:
        raise UserError(f"{folder}: transformers model_type {model_type!r} is not supported "
                        f"(supported: {', '.join(TRANSFORMERS_VITS)})")
    hf_model = AutoModelForImageClassification.from_pretrained(
        folder, local_files_only=True, attn_implementation="eager")
    module = TransformersClassifier(hf_model).eval()
    size = sites.pair(config.get("image_size", 224))
    mean, std = _preprocessor_stats(folder)
    data_config = {"input_size": (int(config.get("num_channels", 3)), *size), "interpolation": "bilinear",
                   "mean": mean, "std": std, "crop_pct": 1.0, "crop_mode": "center"}
    loaded = describe(module, label=folder.name, data_config=data_config,
                      input_source="transformers config.json + preprocessor_config.json")
    loaded.class_names = [hf_model.config.id2label[i] for i in sorted(hf_model.config.id2label)]
    return loaded, weights_file(folder)


def _preprocessor_stats(folder: Path) -> tuple[tuple[float, ...], tuple[float, ...]]:
    path = folder / "preprocessor_config.json"
    if path.is_file():
        config = json.loads(path.read_text())
        return tuple(config.get("image_mean", (0.5,) * 3)), tuple(config.get("image_std", (0.5,) * 3))
    return (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


def load_hub_folder(folder: Path, trust_checkpoint: bool = False) -> tuple[LoadedModel, Path]:
    config = read_config(folder)
    if "architecture" in config:
        return load_timm_folder(folder, config, trust_checkpoint)
    if "model_type" in config:
        return load_transformers_folder(folder, config)
    raise UserError(f"{folder}/config.json names neither a timm 'architecture' nor a "
                    "transformers 'model_type'")
