"""The docs site: built with warnings as errors, a page for every analysis, and every page's
example run as written, on the demo zoo."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest
from matplotlib.figure import Figure

import vitprobe

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs" / "analyses").glob("*.md"))
NOT_ANALYSES = {"load_model", "load_data", "as_loaded", "eigenpairs", "trace_estimate", "spectral_density"}
CLASS_PAGES = {"sharpness_tracker"}  # SharpnessTracker is called from a training loop


def test_the_site_builds_with_warnings_as_errors(tmp_path) -> None:
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    options = (tmp_path / "site" / "options" / "index.html").read_text()
    assert all(f"vitprobe {name}" in options for name in ("sharpness", "attention", "landscape", "report"))


def test_every_analysis_has_a_page() -> None:
    analyses = {n for n in vitprobe.__all__ if inspect.isfunction(getattr(vitprobe, n))} - NOT_ANALYSES
    assert {page.stem for page in PAGES} == analyses | CLASS_PAGES
    for page in PAGES:
        text = page.read_text()
        for heading in ("## What it computes", "## The method's paper", "## Where it departs from the reference",
                        "## Example with the demo zoo", "## API"):
            assert heading in text, (page.name, heading)


@pytest.mark.parametrize("page", PAGES, ids=[p.stem for p in PAGES])
def test_the_example_runs_as_written(page) -> None:
    code = re.search(r"```python\n(.*?)```", page.read_text(), re.S).group(1)
    *body, last = code.strip().splitlines()
    namespace: dict = {}
    exec("\n".join(body), namespace)
    figure = eval(last.split("#")[0].strip(), namespace)
    assert isinstance(figure, Figure), page.name
