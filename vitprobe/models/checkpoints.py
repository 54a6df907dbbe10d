"""Reading weights from local files safely, and loading them strictly with named mismatches.

A checkpoint is whatever ``torch.save`` wrote: a state dict, a training-loop dict holding one
(``{'state_dict': ...}``, ``{'net': ...}``, ``{'model': ..., 'optimizer': ...}``, Lightning's
``.ckpt``), or a pickled module. The state dict taken is the dict of tensors in it whose keys
match the architecture, after stripping one uniform prefix (``module.`` of DataParallel,
``_orig_mod.`` of torch.compile, ``model.`` of a LightningModule wrapping the network). Its
``_metadata`` (each module's state-dict version) is kept, so that loading accepts exactly what
PyTorch's strict ``load_state_dict`` accepts: old BatchNorm dicts without
``num_batches_tracked`` among them.
"""

from __future__ import annotations

import importlib
import pickle
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from vitprobe.errors import UserError, first_line
from vitprobe.progress import log, warn

CHECKPOINT_KEYS = ("state_dict", "model", "net", "model_ema", "state_dict_ema", "network")
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt", ".th", ".tar")
SEARCH_DEPTH = 3  # how deep in nested dicts a state dict is looked for


def read_state_dict(path: str | Path, trust_checkpoint: bool = False,
                    like: nn.Module | None = None) -> OrderedDict[str, torch.Tensor]:
    """The state dict stored in ``path``, with its ``_metadata``.

    ``.safetensors`` files are read with safetensors; anything else with
    ``torch.load(weights_only=True)`` unless ``trust_checkpoint`` allows unpickling code.
    With ``like``, the dict of tensors whose keys best match ``like``'s (after stripping one
    uniform prefix) is taken from anywhere in a checkpoint dict; without, the first of the
    entries :data:`CHECKPOINT_KEYS`, or the top level.
    """
    path = Path(path)
    candidates = list(_state_dicts(read_checkpoint(path, trust_checkpoint)))
    if not candidates:
        raise UserError(f"{path} holds no state dict (looked for dicts of tensors, also under "
                        f"{', '.join(CHECKPOINT_KEYS)})")
    if like is None:
        return min(candidates, key=_priority).state
    expected = set(like.state_dict())
    overlap, best = max(((len(expected & set(c.state)), c) for c in candidates),
                        key=lambda scored: (scored[0], tuple(-rank for rank in _priority(scored[1]))))
    if overlap == 0 and len(candidates) > 1:
        found = "; ".join(f"{c.where}: {_listing(list(c.state), 3)}" for c in candidates if not c.prefix)
        raise UserError(f"no dict of tensors in {path} matches {type(like).__name__} (whose keys "
                        f"begin {_listing(sorted(expected), 3)}); found {found}")
    if best.keys or best.prefix:
        log(f"{path}: weights from {best.where}" + (f", prefix {best.prefix!r} stripped" if best.prefix else ""))
    return best.state


def read_checkpoint(path: Path, trust_checkpoint: bool = False) -> object:
    """What ``path`` holds, read safely: a safetensors file, or ``torch.load``'s object."""
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as error:
            raise UserError(f"cannot read safetensors file {path}: {error}") from None
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", torch.serialization.SourceChangeWarning)
            obj = torch.load(path, map_location="cpu", weights_only=not trust_checkpoint)
    except pickle.UnpicklingError as error:
        raise unpickling_error(path, error) from None
    except Exception as error:  # whatever torch.load makes of a file that is no checkpoint
        raise UserError(f"{path} is not a PyTorch checkpoint ({type(error).__name__}: "
                        f"{first_line(error) or type(error).__name__})") from None
    changed = [w for w in caught if issubclass(w.category, torch.serialization.SourceChangeWarning)]
    for other in (w for w in caught if w not in changed):
        warnings.warn(other.message, other.category, stacklevel=2)
    if changed:  # one line, not PyTorch's diff per pickled class
        warn(f"{path} pickles modules whose source has changed since it was saved; only its "
             "weights are used")
    return obj


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


@dataclass(frozen=True)
class _Candidate:
    """A dict of tensors found in a checkpoint: the keys that lead to it, the uniform prefix
    stripped from its names ("" for none), and the state dict."""

    keys: tuple[str, ...]
    prefix: str
    state: OrderedDict[str, torch.Tensor]

    @property
    def where(self) -> str:
        return "".join(f"[{k!r}]" for k in self.keys) or "the top level"


def _state_dicts(obj: object, keys: tuple[str, ...] = ()) -> Iterator[_Candidate]:
    """Every dict of tensors in ``obj`` (a module counts by its state dict), down to
    :data:`SEARCH_DEPTH` levels, each also with its uniform dotted prefixes stripped."""
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if not isinstance(obj, Mapping):
        return
    tensors = OrderedDict((k, v) for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor))
    metadata = getattr(obj, "_metadata", None)
    if tensors:
        yield _Candidate(keys, "", _with_metadata(tensors, metadata))
        for prefix in _uniform_prefixes(list(tensors)):
            stripped = OrderedDict((k[len(prefix):], v) for k, v in tensors.items())
            yield _Candidate(keys, prefix, _with_metadata(stripped, metadata, prefix))
    if len(keys) < SEARCH_DEPTH:
        for key, value in obj.items():
            if isinstance(key, str) and isinstance(value, (Mapping, nn.Module)):
                yield from _state_dicts(value, (*keys, key))


def _uniform_prefixes(keys: list[str]) -> list[str]:
    """``['module.', 'module.model.']`` when every key starts with ``module.model.``."""
    prefixes: list[str] = []
    parts = [key.split(".") for key in keys]
    for depth in range(min(len(p) for p in parts) - 1):
        if len({p[depth] for p in parts}) != 1:
            break
        prefixes.append(".".join(parts[0][:depth + 1]) + ".")
    return prefixes


def _with_metadata(state: OrderedDict[str, torch.Tensor], metadata: Mapping | None,
                   prefix: str = "") -> OrderedDict[str, torch.Tensor]:
    """``state`` carrying the modules' state-dict versions, renamed as its keys were."""
    if metadata is not None:
        root = prefix[:-1]
        state._metadata = OrderedDict(  # type: ignore[attr-defined]
            ("" if name == root else name[len(prefix):], value) for name, value in metadata.items()
            if name == root or name.startswith(prefix))
    return state


def _priority(candidate: _Candidate) -> tuple[int, int]:
    """Among equal matches: the top level, then the entries of :data:`CHECKPOINT_KEYS` in order;
    an unstripped dict before a stripped one."""
    keys = candidate.keys
    rank = CHECKPOINT_KEYS.index(keys[0]) + 1 if keys and keys[0] in CHECKPOINT_KEYS else len(CHECKPOINT_KEYS) + 1
    return (rank if keys else 0) + len(keys), int(bool(candidate.prefix))


def _listing(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``module`` exactly when PyTorch's strict ``load_state_dict`` would
    (each module first upgrades what its state-dict version allows, as BatchNorm fills a
    missing ``num_batches_tracked`` in dicts saved before it existed); otherwise a UserError
    naming every missing, unexpected and mis-shaped key. On refusal ``module``'s weights are
    partly loaded, as after PyTorch's own refusal."""
    expected = module.state_dict()
    mismatched = [k for k, v in state.items() if k in expected and v.shape != expected[k].shape]
    loadable = OrderedDict((k, v) for k, v in state.items() if k not in mismatched)
    if hasattr(state, "_metadata"):
        loadable._metadata = state._metadata  # type: ignore[attr-defined]
    try:
        outcome = module.load_state_dict(loadable, strict=False)
    except RuntimeError as error:  # a module's own loading hook refused a value
        raise UserError(f"{source} does not load into {type(module).__name__}: {first_line(error)}") from None
    missing = [k for k in outcome.missing_keys if k not in mismatched]
    problems = []
    if missing:
        problems.append(f"missing keys: {_listing(missing)}")
    if outcome.unexpected_keys:
        problems.append(f"unexpected keys: {_listing(list(outcome.unexpected_keys))}")
    if mismatched:
        problems.append("shape mismatches (checkpoint vs model): " + _listing(
            [f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}" for k in mismatched]))
    if problems:
        raise UserError(f"{source} does not match {type(module).__name__}: " + "; ".join(problems))
