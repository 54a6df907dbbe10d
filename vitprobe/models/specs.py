"""``load_model(spec)``: one string names a model, on the command line and in Python.

Spec forms: ``demo:NAME`` (the embedded zoo), a timm name (``resnet50.a1_in1k``;
pretrained weights from the local Hugging Face cache), ``ARCH=PATH`` (a timm architecture
with weights from a local file), a folder in hub layout, ``py:package.module:function``.
"""

from __future__ import annotations

import difflib
import importlib
from contextlib import contextmanager
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from vitprobe.errors import UserError
from vitprobe.models.checkpoints import (checkpoint_num_classes, load_strict, read_state_dict,
                                         timm_filter)
from vitprobe.models.loaded import LoadedModel, as_loaded
from vitprobe.report.files import sha256_file

SPEC_FORMS = (
    ("demo:NAME", "the embedded demo zoo: " + ", ".join(f"demo:{n}" for n in
                                                         ("vit", "resnet", "vit-sam", "resnet-sam"))),
    ("TIMM_NAME", "a timm model with pretrained weights from the local Hugging Face cache, "
                  "e.g. vit_base_patch16_224.augreg_in21k_ft_in1k (downloads need --allow-download)"),
    ("ARCH=PATH", "a timm architecture with weights from a .safetensors, .pth, .pt or .bin file "
                  "(state dict or checkpoint dict), e.g. resnet50=weights.pth"),
    ("FOLDER", "a folder in Hugging Face hub layout (timm config.json, or transformers ViT/DeiT)"),
    ("py:MODULE:FUNCTION", "any callable returning an nn.Module, e.g. py:mypkg.models:build"),
)


def load_model(
    spec: str,
    allow_download: bool = False,
    trust_checkpoint: bool = False,
    device: torch.device | str | None = None,
) -> LoadedModel:
    """Load the model that ``spec`` names, in eval mode, with what analyses need to know."""
    spec = spec.strip()
    checkpoint: Path | None = None
    if spec.startswith("demo:"):
        loaded, checkpoint = _load_demo(spec[len("demo:"):])
    elif spec.startswith("py:"):
        loaded = _load_callable(spec)
    elif "=" in spec:
        architecture, _, path = spec.partition("=")
        loaded, checkpoint = _load_arch_file(architecture.strip(), Path(path.strip()), trust_checkpoint)
    elif Path(spec).is_dir():
        from vitprobe.models.hub_folder import load_hub_folder

        loaded, checkpoint = load_hub_folder(Path(spec), trust_checkpoint)
    elif Path(spec).suffix in (".safetensors", ".pth", ".pt", ".bin") or Path(spec).exists():
        raise UserError(f"{spec!r} is a file: name its architecture too, as ARCH={spec}")
    else:
        loaded, checkpoint = _load_timm_pretrained(spec, allow_download)
    loaded.spec = spec
    if checkpoint is not None:
        loaded.checkpoint = str(checkpoint)
        loaded.checkpoint_sha256 = sha256_file(checkpoint)
    loaded.module.eval()
    if device is not None:
        loaded.to(device)
    return loaded


def unknown_architecture(name: str) -> UserError:
    """A UserError for a name timm does not know, with the closest names it does."""
    import timm

    candidates = timm.list_models(pretrained="." in name) if "." in name else timm.list_models()
    close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.6)
    hint = f"; close matches: {', '.join(close)}" if close else ""
    return UserError(f"unknown model {name!r}{hint} (see `vitprobe models` for spec forms)")


def _load_demo(name: str) -> tuple[LoadedModel, Path]:
    from vitprobe.models.demo import DEMO_ZOO, load_demo

    if name not in DEMO_ZOO:
        raise UserError(f"unknown demo model {name!r}; choose from "
                        + ", ".join(f"demo:{n}" for n in DEMO_ZOO))
    module, record, path = load_demo(name)
    loaded = as_loaded(module, label=f"demo:{name}")
    loaded.class_names = record["classes"]
    loaded.info = {"test_accuracy": record["test_accuracy"], "optimizer": record["recipe"]["optimizer"],
                   "train_seconds": record["train_seconds"]}
    return loaded, path


def _load_callable(spec: str) -> LoadedModel:
    target = spec[len("py:"):]
    module_name, _, function_name = target.partition(":")
    if not module_name or not function_name:
        raise UserError(f"{spec!r}: expected py:package.module:function")
    try:
        function = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as error:
        raise UserError(f"{spec!r}: cannot import {function_name} from {module_name} ({error})") from None
    module = function()
    if not isinstance(module, nn.Module):
        raise UserError(f"{spec!r} returned {type(module).__name__}, not a torch.nn.Module")
    return as_loaded(module, label=function_name)


def _create(architecture: str, **kwargs) -> nn.Module:
    import timm

    if not timm.is_model(architecture):
        raise unknown_architecture(architecture)
    return timm.create_model(architecture, **kwargs)


def _load_arch_file(architecture: str, path: Path, trust_checkpoint: bool) -> tuple[LoadedModel, Path]:
    """A timm architecture with weights from a local file (classes taken from its head)."""
    module = _create(architecture, pretrained=False)
    state = read_state_dict(path, trust_checkpoint)
    num_classes = checkpoint_num_classes(module, state)
    if num_classes is not None and num_classes != module.num_classes:
        module = _create(architecture, pretrained=False, num_classes=num_classes)
    load_strict(module, timm_filter(module, state), str(path))
    return as_loaded(module, label=f"{architecture}:{path.stem}"), path


@contextmanager
def _hub_offline(offline: bool) -> Iterator[None]:
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = offline or saved
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved


def _load_timm_pretrained(name: str, allow_download: bool) -> tuple[LoadedModel, Path | None]:
    """Pretrained timm weights, from the local Hugging Face cache unless downloads are allowed."""
    import timm

    architecture = name.split(".", 1)[0]
    if not timm.is_model(architecture):
        raise unknown_architecture(name)
    if "." in name and name not in timm.list_pretrained(f"{architecture}.*"):
        raise unknown_architecture(name)
    try:
        with _hub_offline(not allow_download):
            module = timm.create_model(name, pretrained=True)
    except Exception as error:  # hub, network and cache errors come in many types
        how = "the download failed" if allow_download else "they are not in the local Hugging Face cache"
        raise UserError(f"no weights for {name}: {how} ({type(error).__name__}); pass "
                        "--allow-download, or give a local file as ARCH=PATH") from None
    return as_loaded(module, label=name), _cached_weights_file(module)


def _cached_weights_file(module: nn.Module) -> Path | None:
    """The file in the Hugging Face cache that timm loaded, for the checkpoint hash."""
    from huggingface_hub import try_to_load_from_cache

    repo = (getattr(module, "pretrained_cfg", None) or {}).get("hf_hub_id")
    if not repo:
        return None
    for filename in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(repo, filename)
        if isinstance(found, str):
            return Path(found)
    return None
