"""``load_model(spec)``: one string names a model, on the command line and in Python.

Spec forms: ``demo:NAME`` (the embedded zoo), a timm name (``resnet50.a1_in1k``;
pretrained weights from the local Hugging Face cache), ``ARCH=PATH`` (a timm architecture
with weights from a local file), ``torchvision:NAME=PATH``, a folder in hub layout,
``py:MODULE:FUNCTION`` or ``py:MODULE:FUNCTION=PATH`` (MODULE a dotted name or a ``.py`` file).
Constructor arguments (``model_args``) go to the timm, torchvision or ``py:`` constructor.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vitprobe.errors import UserError, first_line
from vitprobe.models.checkpoints import (
    WEIGHT_SUFFIXES,
    checkpoint_num_classes,
    load_strict,
    read_state_dict,
    timm_filter,
)
from vitprobe.models.input_config import FLAGS, InputOverrides
from vitprobe.models.loaded import LoadedModel, complete, describe
from vitprobe.progress import warn
from vitprobe.report.files import sha256_file

SPEC_FORMS = (
    ("demo:NAME", "the embedded demo zoo: " + ", ".join(f"demo:{n}" for n in
                                                         ("vit", "resnet", "vit-sam", "resnet-sam"))),
    ("TIMM_NAME", "a timm model with pretrained weights from the local Hugging Face cache, "
                  "e.g. vit_base_patch16_224.augreg_in21k_ft_in1k (downloads need --allow-download)"),
    ("ARCH=PATH", "a timm architecture with weights from a .safetensors, .pth, .pt or .bin file "
                  "(state dict or checkpoint dict), e.g. resnet50=weights.pth"),
    ("torchvision:NAME=PATH", "a torchvision architecture with a torchvision state dict, "
                              "e.g. torchvision:vit_b_16=vit.pth"),
    ("FOLDER", "a folder in Hugging Face hub layout (timm config.json, or transformers "
               "ViT/DeiT/DINOv2)"),
    ("py:MODULE:FUNCTION[=PATH]", "any callable returning an nn.Module, with weights from PATH if "
                                  "given; MODULE is a dotted name or a .py file, e.g. "
                                  "py:models.py:resnet20=ckpt.th"),
)


def load_model(
    spec: str,
    allow_download: bool = False,
    trust_checkpoint: bool = False,
    device: torch.device | str | None = None,
    model_args: dict[str, Any] | None = None,
    input: InputOverrides | None = None,
) -> LoadedModel:
    """Load the model that ``spec`` names, in eval mode, with what analyses need to know.

    ``model_args`` are keyword arguments of the architecture's constructor (timm, torchvision or
    the ``py:`` function); ``input`` overrides or supplies the input configuration. The model is
    run once on a zero image of that configuration, so a configuration it cannot take is
    refused here, with the flags that fix it.
    """
    spec = spec.strip()
    kwargs = dict(model_args or {})
    checkpoint: Path | None = None
    if spec.startswith("demo:"):
        _no_arguments(spec, kwargs)
        loaded, checkpoint = _load_demo(spec[len("demo:"):])
    elif spec.startswith("py:"):
        loaded, checkpoint = _load_callable(spec, kwargs, trust_checkpoint)
    elif spec.startswith("torchvision:"):
        from vitprobe.models.torchvision_models import load_torchvision

        name, path = _split_path(spec[len("torchvision:"):], spec)
        loaded, checkpoint = load_torchvision(name, path, kwargs, trust_checkpoint)
    elif "=" in spec:
        architecture, path = _split_path(spec, spec)
        loaded, checkpoint = _load_arch_file(architecture, path, kwargs, trust_checkpoint)
    elif Path(spec).is_dir():
        from vitprobe.models.hub_folder import load_hub_folder

        _no_arguments(spec, kwargs)
        loaded, checkpoint = load_hub_folder(Path(spec), trust_checkpoint)
    elif Path(spec).suffix in WEIGHT_SUFFIXES or Path(spec).exists():
        raise UserError(f"{spec!r} is a file: name its architecture too, as ARCH={spec}")
    else:
        loaded, checkpoint = _load_timm_pretrained(spec, allow_download, kwargs)
    loaded.spec = spec
    if checkpoint is not None:
        loaded.checkpoint = str(checkpoint)
        loaded.checkpoint_sha256 = sha256_file(checkpoint)
    loaded.module.eval()
    if device is not None:
        loaded.to(device)
    loaded.with_input(input or InputOverrides())
    if loaded.guessed:
        warn(f"{loaded.label} has no input configuration of its own: guessed "
             f"{', '.join(loaded.guessed.values())} ({describe_input(loaded)}); set {FLAGS} to what "
             "it was trained with")
    return complete(loaded, check=loaded.input_source != "timm pretrained_cfg")


def describe_input(loaded: LoadedModel) -> str:
    config = loaded.data_config
    c, h, w = config["input_size"]
    return (f"{c}x{h}x{w}, mean {tuple(round(v, 4) for v in config['mean'])}, "
            f"std {tuple(round(v, 4) for v in config['std'])}")


def _no_arguments(spec: str, kwargs: dict[str, Any]) -> None:
    if kwargs:
        raise UserError(f"--model-args do not apply to {spec!r}: its architecture is fixed")


def _split_path(text: str, spec: str) -> tuple[str, Path]:
    """``NAME=PATH`` split in two; a UserError saying which half is missing."""
    name, _, path = text.partition("=")
    name, path = name.strip(), path.strip()
    if not name:
        raise UserError(f"{spec!r} names no architecture before '=' (expected NAME=PATH)")
    if not path:
        raise UserError(f"{spec!r} names no checkpoint file after '=' (expected NAME=PATH)")
    return name, Path(path)


def unknown_architecture(name: str) -> UserError:
    """A UserError for a name timm does not know, with the closest names it does."""
    import timm

    candidates = timm.list_models(pretrained="." in name) if "." in name else timm.list_models()
    close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.6)
    hint = f"; close matches: {', '.join(close)}" if close else ""
    return UserError(f"unknown model {name!r}{hint} (see `vitprobe models` for spec forms)")


def _load_demo(name: str) -> tuple[LoadedModel, Path]:
    from vitprobe.models.demo import DEMO_SPECS, DEMO_ZOO, load_demo

    if name not in DEMO_ZOO:
        raise UserError(f"unknown demo model {name!r}; choose from {', '.join(DEMO_SPECS)}")
    module, record, path = load_demo(name)
    loaded = describe(module, label=f"demo:{name}")
    loaded.class_names = record["classes"]
    loaded.info = {"test_accuracy": record["test_accuracy"], "optimizer": record["recipe"]["optimizer"],
                   "train_seconds": record["train_seconds"]}
    return loaded, path


def _import_function(spec: str, target: str):
    """The callable that ``MODULE:FUNCTION`` names; MODULE may be a ``.py`` file."""
    module_name, _, function_name = target.rpartition(":")
    if not module_name or not function_name:
        raise UserError(f"{spec!r}: expected py:MODULE:FUNCTION (MODULE a dotted name or a .py file)")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise UserError(f"{spec!r}: no such file {path}")
            source = importlib.util.spec_from_file_location(path.stem, path)
            if source is None or source.loader is None:
                raise UserError(f"{spec!r}: {path} cannot be imported as a Python module")
            module = importlib.util.module_from_spec(source)
            sys.modules[path.stem] = module  # so that pickling and dataclasses see it
            with _importable_beside(path):  # its own sibling modules import as they would there
                source.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
        function = getattr(module, function_name)
    except UserError:
        raise
    except Exception as error:  # ImportError, AttributeError, or the module's own code failing
        raise UserError(f"{spec!r}: cannot import {function_name} from {module_name} "
                        f"({type(error).__name__}: {error})") from None
    if not callable(function):
        raise UserError(f"{spec!r}: {function_name} is a {type(function).__name__}, not callable")
    return function


@contextmanager
def _importable_beside(path: Path) -> Iterator[None]:
    """The folder of ``path`` first on ``sys.path`` while its module is imported."""
    folder = str(path.resolve().parent)
    sys.path.insert(0, folder)
    try:
        yield
    finally:
        sys.path.remove(folder)


def _load_callable(spec: str, kwargs: dict[str, Any],
                   trust_checkpoint: bool) -> tuple[LoadedModel, Path | None]:
    target, _, path_text = spec[len("py:"):].partition("=")
    function = _import_function(spec, target.strip())
    try:
        module = function(**kwargs)
    except Exception as error:  # the user's builder: its failure is the user's to fix
        raise UserError(f"{spec!r}: {getattr(function, '__name__', 'the builder')}"
                        f"({', '.join(f'{k}={v!r}' for k, v in kwargs.items())}) raised "
                        f"{type(error).__name__}: {error}") from None
    if not isinstance(module, nn.Module):
        raise UserError(f"{spec!r} returned {type(module).__name__}, not a torch.nn.Module")
    name = target.rpartition(":")[2]
    path = None
    if path_text.strip():
        path = Path(path_text.strip())
        load_strict(module, read_state_dict(path, trust_checkpoint, like=module), str(path))
        name = f"{name}:{path.stem}"
    return describe(module, label=name), path


def _create(architecture: str, **kwargs) -> nn.Module:
    import timm

    if not timm.is_model(architecture):
        raise unknown_architecture(architecture)
    try:
        return timm.create_model(architecture, **kwargs)
    except TypeError as error:  # an unknown or ill-typed constructor argument
        raise UserError(f"{architecture}: bad --model-args ({error})") from None


def _load_arch_file(architecture: str, path: Path, kwargs: dict[str, Any],
                    trust_checkpoint: bool) -> tuple[LoadedModel, Path]:
    """A timm architecture with weights from a local file (classes taken from its head)."""
    module = _create(architecture, pretrained=False, **kwargs)
    state = read_state_dict(path, trust_checkpoint, like=module)
    num_classes = checkpoint_num_classes(module, state)
    if num_classes is not None and num_classes != module.num_classes and "num_classes" not in kwargs:
        module = _create(architecture, pretrained=False, **{**kwargs, "num_classes": num_classes})
    load_strict(module, timm_filter(module, state), str(path))
    return describe(module, label=f"{architecture}:{path.stem}"), path


@contextmanager
def _hub_offline(offline: bool) -> Iterator[None]:
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = offline or saved
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved


def _load_timm_pretrained(name: str, allow_download: bool,
                          kwargs: dict[str, Any]) -> tuple[LoadedModel, Path | None]:
    """Pretrained timm weights, from the local Hugging Face cache unless downloads are allowed."""
    import timm

    architecture = name.split(".", 1)[0]
    if not timm.is_model(architecture):
        raise unknown_architecture(name)
    if "." in name and name not in timm.list_pretrained(f"{architecture}.*"):
        raise unknown_architecture(name)
    try:
        with _hub_offline(not allow_download):
            module = timm.create_model(name, pretrained=True, **kwargs)
    except TypeError as error:
        raise UserError(f"{name}: bad --model-args ({error})") from None
    except Exception as error:  # hub, network and cache errors come in many types
        cached = _cached_weights_file(timm.create_model(name, pretrained=False))
        if cached is not None:
            raise UserError(f"the cached weights of {name} are damaged: {cached} ({type(error).__name__}: "
                            f"{first_line(error)}); "
                            "delete that file and download it again") from None
        how = "the download failed" if allow_download else "they are not in the local Hugging Face cache"
        raise UserError(f"no weights for {name}: {how} ({type(error).__name__}); pass "
                        "--allow-download, or give a local file as ARCH=PATH") from None
    return describe(module, label=name), _cached_weights_file(module)


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
