"""Folders in Hugging Face hub layout: timm style (``config.json`` with ``architecture``)
or, with the ``hf`` extra, a transformers ViT, DeiT or DINOv2 image classifier."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vitprobe.errors import UserError, first_line
from vitprobe.models.checkpoints import load_strict, read_state_dict, timm_filter
from vitprobe.models.input_config import pair
from vitprobe.models.loaded import LoadedModel, describe

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")
TRANSFORMERS_VITS = ("vit", "deit", "dinov2", "dinov2_with_registers")


def read_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.is_file():
        raise UserError(f"{folder} is not a Hugging Face hub folder: it has no config.json")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"cannot parse {path}: {error}") from None
    if not isinstance(config, dict):
        raise UserError(f"{path} holds a JSON {type(config).__name__}, not an object of settings")
    return config


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
    if not isinstance(architecture, str):
        raise UserError(f"{folder}/config.json: architecture must be a timm model name, got {architecture!r}")
    if not timm.is_model(architecture):
        raise unknown_architecture(architecture)
    kwargs = config.get("model_args") or {}
    if not isinstance(kwargs, dict):
        raise UserError(f"{folder}/config.json: model_args must be an object, got {kwargs!r}")
    kwargs = dict(kwargs)
    if "num_classes" in config:
        if not isinstance(config["num_classes"], int) or isinstance(config["num_classes"], bool):
            raise UserError(f"{folder}/config.json: num_classes must be an integer, got "
                            f"{config['num_classes']!r}")
        kwargs["num_classes"] = config["num_classes"]
    overlay = config.get("pretrained_cfg") or {}
    if not isinstance(overlay, dict):
        raise UserError(f"{folder}/config.json: pretrained_cfg must be an object")
    try:
        module = timm.create_model(architecture, pretrained=False, pretrained_cfg_overlay=overlay, **kwargs)
    except (TypeError, ValueError, AssertionError) as error:
        raise UserError(f"{folder}/config.json: {architecture} rejects its settings "
                        f"({type(error).__name__}: {error})") from None
    path = weights_file(folder)
    load_strict(module, timm_filter(module, read_state_dict(path, trust_checkpoint, like=module)), str(path))
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
    weights = weights_file(folder)
    if weights.suffix == ".bin":  # transformers would unpickle it: refuse code the timm way first
        read_state_dict(weights)
    try:
        hf_model = AutoModelForImageClassification.from_pretrained(
            folder, local_files_only=True, attn_implementation="eager")
    except Exception as error:  # transformers' many ways to reject a folder
        raise UserError(f"cannot load the transformers model in {folder}: "
                        f"{type(error).__name__}: {first_line(error)}") from None
    module = TransformersClassifier(hf_model).eval()
    size = pair(config.get("image_size", 224))
    mean, std = _preprocessor_stats(folder)
    data_config = {"input_size": (int(config.get("num_channels", 3)), *size), "interpolation": "bilinear",
                   "mean": mean, "std": std, "crop_pct": 1.0, "crop_mode": "center"}
    loaded = describe(module, label=folder.name, data_config=data_config,
                      input_source="transformers config.json + preprocessor_config.json")
    loaded.class_names = [hf_model.config.id2label[i] for i in sorted(hf_model.config.id2label)]
    return loaded, weights


def _preprocessor_stats(folder: Path) -> tuple[tuple[float, ...], tuple[float, ...]]:
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        return (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    try:
        config = json.loads(path.read_text())
        mean, std = (tuple(float(v) for v in config.get(key, (0.5,) * 3)) for key in ("image_mean", "image_std"))
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, TypeError, ValueError) as error:
        raise UserError(f"cannot read {path}: {type(error).__name__}: {error}") from None
    return mean, std


def load_hub_folder(folder: Path, trust_checkpoint: bool = False) -> tuple[LoadedModel, Path]:
    config = read_config(folder)
    if "architecture" in config:
        return load_timm_folder(folder, config, trust_checkpoint)
    if "model_type" in config:
        return load_transformers_folder(folder, config)
    raise UserError(f"{folder}/config.json names neither a timm 'architecture' nor a "
                    "transformers 'model_type'")
