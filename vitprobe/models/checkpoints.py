"""Reading weights from local files safely, and loading them strictly with named mismatches."""

from __future__ import annotations

import importlib
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from vitprobe.errors import UserError, first_line

CHECKPOINT_KEYS = ("state_dict", "model", "model_ema", "state_dict_ema")
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")


def read_state_dict(path: str | Path, trust_checkpoint: bool = False) -> dict[str, torch.Tensor]:
    """The state dict stored in ``path``.

    ``.safetensors`` files are read with safetensors; anything else with
    ``torch.load(weights_only=True)`` unless ``trust_checkpoint`` allows unpickling code.
    A checkpoint dict's ``state_dict`` / ``model`` / ``model_ema`` entry is taken, and the
    ``module.`` (DDP) and ``_orig_mod.`` (torch.compile) prefixes are stripped.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            obj = load_file(str(path))
        except (SafetensorError, OSError) as error:
            raise UserError(f"cannot read safetensors file {path}: {error}") from None
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=not trust_checkpoint)
        except pickle.UnpicklingError as error:
            raise unpickling_error(path, error) from None
        except Exception as error:  # whatever torch.load makes of a file that is no checkpoint
            raise UserError(f"{path} is not a PyTorch checkpoint ({type(error).__name__}: "
                            f"{first_line(error) or type(error).__name__})") from None
    return _unwrap(obj, path)


def unpickling_error(path: Path, error: pickle.UnpicklingError) -> UserError:
    """The refusal of a weights-only load: a pickle that names code (a payload, or a checkpoint
    saved with its classes) keeps torch's detail and the opt-in; anything else is no checkpoint."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    named = [line for line in lines if "GLOBAL" in line or "global" in line.split()]
    if named:
        return UserError(f"{path} holds pickled objects beyond tensors ({named[0]}); pass "
                         "--trust-checkpoint (trust_checkpoint=True) only if you trust its source")
    detail = next((line for line in lines if line.startswith("Unsupported") or "invalid load key" in line),
                  lines[-1] if lines else "")
    return UserError(f"{path} is not a PyTorch checkpoint ({detail})")


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for key in CHECKPOINT_KEYS:
            if isinstance(obj.get(key), (Mapping, nn.Module)):
                obj = obj[key]
                break
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if not isinstance(obj, Mapping) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{path} holds no state dict (looked for tensors and the keys "
                        f"{', '.join(CHECKPOINT_KEYS)})")
    state = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    for prefix in WRAPPER_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def timm_filter(module: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Apply the ``checkpoint_filter_fn`` of the timm module that defines ``module``'s class.

    For ViTs that resamples positional embeddings (and patch embeddings) to the model's
    grid and converts foreign layouts; architectures without a filter pass through.
    """
    source = importlib.import_module(type(module).__module__)
    filter_fn = getattr(source, "checkpoint_filter_fn", None)
    return filter_fn(state, module) if filter_fn is not None else state


def classifier_names(module: nn.Module) -> tuple[str, ...]:
    names = (getattr(module, "pretrained_cfg", None) or {}).get("classifier") or ()
    return (names,) if isinstance(names, str) else tuple(names)


def checkpoint_num_classes(module: nn.Module, state: Mapping[str, torch.Tensor]) -> int | None:
    """The number of classes of the checkpoint's classifier head, if it can be told."""
    for name in classifier_names(module):
        weight = state.get(f"{name}.weight")
        if weight is not None and weight.ndim >= 2:
            return int(weight.shape[0])
    return None


def _listing(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def load_strict(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``module``; any missing, unexpected or mis-shaped key is a UserError."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
                  if k in state and state[k].shape != v.shape]
    problems = []
    if missing:
        problems.append(f"missing keys: {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listing(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches (checkpoint vs model): {_listing(mismatched)}")
    if problems:
        raise UserError(f"{source} does not match {type(module).__name__}: " + "; ".join(problems))
    module.load_state_dict(state, strict=True)
