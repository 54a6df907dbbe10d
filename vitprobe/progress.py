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
    """Silence (or re-enable) every progress bar and log line of this process, the Hugging Face
    libraries' own ("Loading weights", downloads) included."""
    global _quiet
    _quiet = quiet
    if quiet:  # read by huggingface_hub, and through it by transformers, when they are imported
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    else:
        os.environ.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)
    for module, off, on in (("transformers.utils.logging", "disable_progress_bar", "enable_progress_bar"),
                            ("huggingface_hub.utils", "disable_progress_bars", "enable_progress_bars")):
        if module in sys.modules:  # already imported: switch it directly
            getattr(sys.modules[module], off if quiet else on)()


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
