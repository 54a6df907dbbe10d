"""torchvision architectures with their own state dicts: ``torchvision:NAME=PATH``.

The input configuration is that of the architecture's default torchvision weights
(``get_model_weights(NAME).DEFAULT.transforms()``: resize, centre crop, interpolation, mean and
std), read from torchvision's metadata without downloading anything. The number of classes is
read off the checkpoint's last classifier weight.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from vitprobe.errors import UserError
from vitprobe.models.checkpoints import load_strict, read_state_dict
from vitprobe.models.loaded import LoadedModel, describe


def torchvision_config(name: str, module: nn.Module) -> tuple[dict[str, Any], str] | None:
    """timm-style preprocessing of torchvision's default weights for ``name``."""
    import torchvision

    try:
        weights = torchvision.models.get_model_weights(name).DEFAULT
    except (ValueError, KeyError, AttributeError):
        return None
    transform = weights.transforms()
    crop = int(transform.crop_size[0])
    resize = int(transform.resize_size[0])
    size = getattr(module, "image_size", crop)
    return ({"input_size": (3, int(size), int(size)),
             "interpolation": transform.interpolation.value,
             "mean": tuple(transform.mean), "std": tuple(transform.std),
             "crop_pct": crop / resize, "crop_mode": "center"},
            f"torchvision {weights}")


def _classifier_outputs(module: nn.Module, state: dict) -> dict[str, Any]:
    """``num_classes`` of the checkpoint when its last 2-D weight differs from the model's."""
    matrices = [k for k, v in module.state_dict().items() if k.endswith(".weight") and v.dim() == 2]
    if matrices and matrices[-1] in state:
        classes = int(state[matrices[-1]].shape[0])
        if classes != module.state_dict()[matrices[-1]].shape[0]:
            return {"num_classes": classes}
    return {}


def load_torchvision(name: str, path: Path, kwargs: dict[str, Any],
                     trust_checkpoint: bool) -> tuple[LoadedModel, Path]:
    import torchvision

    available = torchvision.models.list_models()
    if name not in available:
        import difflib

        close = difflib.get_close_matches(name, available, n=5, cutoff=0.6)
        raise UserError(f"unknown torchvision model {name!r}"
                        + (f"; close matches: {', '.join(close)}" if close else ""))

    def build(**extra: Any) -> nn.Module:
        try:
            return torchvision.models.get_model(name, weights=None, **{**kwargs, **extra})
        except (TypeError, ValueError) as error:
            raise UserError(f"torchvision:{name}: bad --model-args ({error})") from None

    module = build()
    state = read_state_dict(path, trust_checkpoint, like=module)
    if "num_classes" not in kwargs and (extra := _classifier_outputs(module, state)):
        module = build(**extra)
    load_strict(module, state, str(path))
    config = torchvision_config(name, module)
    loaded = describe(module, label=f"{name}:{path.stem}", data_config=config[0] if config else None,
                      input_source=config[1] if config else None)
    return loaded, path
