"""The JSON sidecar of every run: what ran, on what, with which versions, for how long."""

from __future__ import annotations

import platform
import sys
from datetime import datetime, timezone
from importlib import metadata as importlib_metadata
from typing import Any

import torch

from vitprobe.data.batches import Batches
from vitprobe.models.loaded import LoadedModel

PACKAGES = ("torch", "timm", "pyhessian", "captum", "numpy", "scipy", "pandas")


def package_versions() -> dict[str, str | None]:
    """vitprobe's version (of the code running, installed or not) and its main dependencies'."""
    from vitprobe import __version__

    versions: dict[str, str | None] = {"vitprobe": __version__}
    for name in PACKAGES:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def model_record(model: LoadedModel) -> dict[str, Any]:
    return {
        "spec": model.spec,
        "label": model.label,
        "family": model.family,
        "parameters": model.num_parameters,
        "checkpoint": model.checkpoint,
        "checkpoint_sha256": model.checkpoint_sha256,
        "input_size": list(model.data_config["input_size"]),
        "input_config": {k: list(v) if isinstance(v, tuple) else v for k, v in model.data_config.items()},
        "input_source": model.input_source,
        "input_guessed": model.guessed,
        **({"info": model.info} if model.info else {}),
    }


def data_record(data: Batches) -> dict[str, Any]:
    return {
        "spec": data.spec,
        "images": data.num_images,
        "labels_from_model": data.labels_from_model,
        **data.info,
    }


def run_metadata(
    command: str,
    argv: list[str],
    device: torch.device,
    seed: int,
    models: list[LoadedModel],
    data: dict[str, Batches],
    seconds: float,
    status: str,
    world_size: int = 1,
    failures: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    """Everything needed to reproduce (or doubt) one run's numbers."""
    return {
        "command": command,
        "argv": argv,
        "python": sys.version.split()[0],
        "versions": package_versions(),
        "device": device_description(device),
        "world_size": world_size,
        "seed": seed,
        "models": [model_record(m) for m in models],
        "data": {label: data_record(d) for label, d in data.items()},
        "seconds": round(seconds, 3),
        "status": status,
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "failed_models": failures or [],
    }
