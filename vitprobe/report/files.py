"""Atomic writes: a temporary file in the same folder, then ``os.replace``."""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd


def slug(label: str) -> str:
    """A model label as a file or folder name: runs of anything but letters, digits, ``.``,
    ``-`` and ``_`` become ``_`` (``demo:vit->demo:vit-sam`` -> ``demo_vit_demo_vit-sam``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_") or "model"


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` on a temporary path next to ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual mode
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def write_csv(frame: pd.DataFrame, path: str | Path) -> Path:
    return atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False))


def write_json(obj: Any, path: str | Path) -> Path:
    return write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()
