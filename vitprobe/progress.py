"""Progress bars that show on a terminal and stay quiet in ``--quiet`` runs and in tests."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")

_quiet = False


def set_quiet(quiet: bool) -> None:
    """Silence (or re-enable) every progress bar and log line of this process; quiet also
    silences the Hugging Face libraries' own bars ("Loading weights", downloads)."""
    global _quiet
    _quiet = quiet
    if not quiet:
        return  # the Hugging Face libraries keep their own (and the user's) settings
    # read by huggingface_hub (and through it by transformers) when it is imported ...
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    # ... and switched off directly where it already is
    for module, off in (("transformers.utils.logging", "disable_progress_bar"),
                        ("huggingface_hub.utils", "disable_progress_bars")):
        if module in sys.modules:
            getattr(sys.modules[module], off)()


def is_quiet() -> bool:
    return _quiet


def progress(iterable: Iterable[T], desc: str = "", total: int | None = None) -> Iterator[T]:
    """Wrap ``iterable`` in a tqdm bar when stderr is a terminal and the run is not quiet."""
    disable = _quiet or not sys.stderr.isatty()
    return iter(tqdm(iterable, desc=desc, total=total, disable=disable, leave=False))


def log(message: str) -> None:
    """Print a status line on stderr unless the run is quiet."""
    if not _quiet:
        print(message, file=sys.stderr, flush=True)


def warn(message: str) -> None:
    """Print a warning line on stderr, also in quiet runs: it says a result may not be what
    the user meant."""
    print(f"vitprobe: warning: {message}", file=sys.stderr, flush=True)
