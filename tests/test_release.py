"""One version, written once: the package, its installed metadata, the changelog's newest entry
and every run's JSON agree."""

from __future__ import annotations

import json
import re
from importlib import metadata
from pathlib import Path

import vitprobe
from vitprobe.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_the_version_is_the_same_everywhere(tmp_path) -> None:
    assert re.fullmatch(r"\d+\.\d+\.\d+", vitprobe.__version__)
    assert metadata.version("vitprobe") == vitprobe.__version__
    newest = next(line for line in (ROOT / "CHANGELOG.md").read_text().splitlines() if line.startswith("## "))
    assert newest.startswith(f"## {vitprobe.__version__} ")
    out = tmp_path / "out"
    assert main(["throughput", "--model", "demo:vit", "--steps", "1", "--warmup", "0", "--batch-size", "2",
                 "--out", str(out), "--quiet"]) == 0
    assert json.loads((out / "throughput.json").read_text())["versions"]["vitprobe"] == vitprobe.__version__
