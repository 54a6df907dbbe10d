"""What a subcommand is, and the context it runs in.

Each analysis package has a ``command.py`` that defines ``COMMANDS = [Command(...)]``, each with
its options dataclass (:mod:`vitprobe.options`). The CLI (or the study runner, in-process) builds
the options and a :class:`RunContext`, and calls ``command.run(ctx)``. A
command computes through the analysis API and hands rows and figures to the context, which
writes ``<out>/<name>.csv``, ``<out>/<name>.json`` and ``<out>/figures/``.

The CSV is rewritten atomically after every ``add_rows``, so an interrupted run keeps what it
finished, and the JSON beside it is rewritten with it: its ``status`` (``running``,
``interrupted``, ``complete``, ...), the models this run finished, the CSV's SHA-256, and the
rows kept from a previous run. A rerun never destroys a previous result before it has a better
one: until it completes, the previous rows of models it has not recomputed yet stay in the CSV
(and the JSON says so); a complete run holds its own rows only. A lock file refuses a second
live run of the same command into the same folder.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import pandas as pd
import torch

from vitprobe import distributed
from vitprobe.data.batches import Batches
from vitprobe.errors import UserError
from vitprobe.models.input_config import InputOverrides
from vitprobe.models.loaded import LoadedModel
from vitprobe.options import SharedOptions, recorded
from vitprobe.progress import log
from vitprobe.report import run_lock
from vitprobe.report.files import sha256_file, write_csv, write_json
from vitprobe.report.metadata import run_metadata


class AllModelsFailed(UserError):
    """Every one of several models failed; each was reported on its own line."""


@dataclass(frozen=True)
class Command:
    """One ``python -m vitprobe NAME`` subcommand."""

    name: str
    help: str
    options: type[SharedOptions]
    run: Callable[[RunContext[Any]], None]


Options = TypeVar("Options", bound=SharedOptions)


@dataclass
class RunContext(Generic[Options]):
    """Loads models and data for a command and writes what it produces."""

    command: Command
    options: Options
    argv: list[str]
    device: torch.device
    out: Path = field(init=False)  # --out, or ./vitprobe-out
    started: float = field(default_factory=time.perf_counter)
    rows: list[pd.DataFrame] = field(default_factory=list)
    loaded: list[LoadedModel] = field(default_factory=list)
    datasets: dict[str, Batches] = field(default_factory=dict)
    failures: list[dict[str, str]] = field(default_factory=list)
    done: list[str] = field(default_factory=list)
    choices: dict[str, dict] = field(default_factory=dict)  # how each model was computed
    declared: dict[str, Any] = field(default_factory=lambda: {"index": [], "reported": [], "labels": {}})
    input_overrides: InputOverrides = field(default_factory=InputOverrides)  # set by check_shared_options
    previous: Previous | None = None
    _begun: bool = False
    _locked: bool = False

    def __post_init__(self) -> None:
        self.out = self.options.out or Path("vitprobe-out")

    # -- inputs -------------------------------------------------------------------------
    @property
    def model_specs(self) -> list[str]:
        return list(self.options.model or self.options.MODELS)

    @property
    def data_spec(self) -> str:
        """``--data``, or the command's default (the training split for sharpness and landscapes)."""
        return self.options.data or self.options.DATA

    @property
    def num_images(self) -> int:
        return self.options.num_images or self.options.NUM_IMAGES

    @property
    def batch_size(self) -> int:
        return self.options.batch_size or self.options.BATCH_SIZE

    def check_options(self) -> None:
        """Refuse bad options before any work (:meth:`SharedOptions.check`), and keep the input
        flags (``--input-size``, ``--mean``, ``--std``, ``--interpolation``, ``--crop-pct``,
        ``--in-chans``) as :attr:`input_overrides`."""
        args = self.options
        args.check()
        size = args.input_size
        self.input_overrides = InputOverrides(
            input_size=(size[0], size[-1]) if size else None,
            mean=tuple(args.mean) if args.mean else None, std=tuple(args.std) if args.std else None,
            interpolation=args.interpolation, crop_pct=args.crop_pct, in_chans=args.in_chans)

    def load_model(self, spec: str, index: int | None = None) -> LoadedModel:
        """Load ``spec`` with the run's options; ``index`` picks the ``--model-args`` of the
        ``--model`` at that position."""
        from vitprobe.models import load_model

        self.begin()
        model = load_model(
            spec,
            allow_download=self.options.allow_download,
            trust_checkpoint=self.options.trust_checkpoint,
            device=self.device,
            model_args=(self.options.model_args or {}).get(index) if index is not None else None,
            input=self.input_overrides,
        )
        self.loaded.append(model)
        return model

    def models(self) -> Iterator[LoadedModel]:
        """Each ``--model`` (or the command's default models), loaded one at a time. With several
        models, one that cannot be loaded is reported and skipped (see :meth:`isolated`); when
        every one failed, :class:`AllModelsFailed` ends the command after the last."""
        for index, spec in enumerate(self.model_specs):
            model = None
            with self.isolated(spec):
                model = self.load_model(spec, index)
            if model is not None:
                yield model
                self.finished(model.label)
        self.require_a_model()

    def finished(self, label: str) -> None:
        """``label``'s work is over: it counts as done unless it failed, and the files say so."""
        if not any(failure["model"] == label for failure in self.failures):
            self.done.append(label)
        self.flush("running")

    def require_a_model(self) -> None:
        """After the models' loop: stop the command when every model failed, before it builds
        comparisons of nothing. (A single model's error has ended the run already: see
        :meth:`isolated`.)"""
        if self.failures and not self.done:
            raise AllModelsFailed(f"{len(self.failures)} of {len(self.model_specs)} models failed (see above)")

    @contextmanager
    def isolated(self, label: str) -> Iterator[None]:
        """Work on one model: a user error is kept for the JSON and the exit status; with several
        models it is reported on one line and the other models still run."""
        try:
            yield
        except UserError as error:
            self.failures.append({"model": label, "error": str(error)})
            if len(self.model_specs) == 1:
                raise
            print(f"vitprobe {self.command.name}: error: {label}: {error}", file=sys.stderr, flush=True)

    def data(self, model: LoadedModel, num_images: int | None = None,
             input_size: tuple[int, int] | None = None) -> Batches:
        """The ``--data`` images preprocessed for ``model``, on the run's device."""
        from vitprobe.data import load_data

        batches = load_data(
            self.data_spec,
            model,
            class_names=self.options.class_names,
            num_images=num_images or self.num_images,
            batch_size=self.batch_size,
            seed=self.options.seed,
            input_size=input_size,
            device=self.device,
        )
        self.datasets[model.label] = batches
        return batches

    # -- outputs ------------------------------------------------------------------------
    @property
    def csv_path(self) -> Path:
        return self.out / f"{self.command.name}.csv"

    @property
    def json_path(self) -> Path:
        return self.out / f"{self.command.name}.json"

    def begin(self) -> None:
        """Before the first model: check ``--out``, take its lock for this command, and read
        the previous run's CSV and JSON there (rank 0 only; once)."""
        if self._begun or not distributed.is_main():
            return
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise UserError(f"--out {self.out} is a file, not a folder") from None
        except OSError as error:
            raise UserError(f"cannot create --out {self.out}: {error.strerror}") from None
        self._locked = run_lock.acquire(self.lock_path, self.command.name)
        self.previous = Previous.read(self.csv_path, self.json_path)
        self._begun = True
        self.flush("running")

    def end(self, status: str) -> None:
        """Write the final CSV and JSON for ``status`` and release the lock; never raises."""
        if not self._begun or not distributed.is_main():
            return
        try:
            if self.rows or self.loaded or self.failures:
                self.flush(status)
        finally:
            if self._locked:
                run_lock.release(self.lock_path)

    @property
    def lock_path(self) -> Path:
        return self.out / f".{self.command.name}.lock"

    def add_rows(self, frame: pd.DataFrame) -> None:
        """Append tidy rows (a result's ``to_frame()``, whose declaration of index columns and
        reported metrics goes to the JSON) and rewrite the CSV and JSON at once (rank 0 only)."""
        if "index" not in frame.attrs:
            raise TypeError("rows without a column declaration: build them with a Result's to_frame()")
        self.begin()
        reported = frame.attrs["reported"]
        for key, names in (("index", frame.attrs["index"]),
                           ("reported", frame["metric"].unique() if reported is None else reported)):
            self.declared[key] += [name for name in names if name not in self.declared[key]]
        self.declared["labels"].update(frame.attrs["labels"])
        self.rows.append(frame)
        self.flush("running")

    def kept_rows(self, status: str) -> pd.DataFrame:
        """The previous run's rows of models this run has not produced rows for (none once
        the run is complete)."""
        previous = self.previous.rows if self.previous is not None else None
        if status == "complete" or previous is None or "model" not in previous:
            return pd.DataFrame()
        table = self.table()
        mine = set(table["model"]) if "model" in table else set()
        return previous[~previous["model"].isin(mine)]

    def flush(self, status: str) -> None:
        """The CSV (this run's rows, plus the kept ones) and the JSON that describes it."""
        if not distributed.is_main() or not self._begun:
            return
        kept = self.kept_rows(status)
        parts = [frame for frame in (self.table(), kept) if not frame.empty]
        csv_sha = None
        if parts:
            write_csv(pd.concat(parts, ignore_index=True), self.csv_path)
            csv_sha = sha256_file(self.csv_path)
        elif self.csv_path.exists():
            self.csv_path.unlink()
        self.write_metadata(status, csv_sha, kept)

    def table(self) -> pd.DataFrame:
        return pd.concat(self.rows, ignore_index=True) if self.rows else pd.DataFrame()

    def save_figure(self, figure, name: str) -> Path | None:
        """Write a matplotlib figure to ``<out>/figures/<name>.<format>`` and close it."""
        import matplotlib.pyplot as plt

        from vitprobe.report.files import atomic_write

        path = self.out / "figures" / f"{name}.{self.options.format}"
        if distributed.is_main():
            atomic_write(path, lambda tmp: figure.savefig(tmp, format=self.options.format,
                                                          dpi=200, bbox_inches="tight"))
        plt.close(figure)
        return path

    def log(self, message: str) -> None:
        if distributed.is_main():
            log(message)

    def print_table(self, frame: pd.DataFrame) -> None:
        """Print a result table on stdout (rank 0), even in quiet runs: it is the answer."""
        if distributed.is_main():
            with pd.option_context("display.width", 160, "display.max_columns", 20):
                print(frame.to_string(index=False, float_format=_format_float))

    def write_metadata(self, status: str, csv_sha: str | None, kept: pd.DataFrame) -> None:
        meta = run_metadata(
            command=self.command.name,
            argv=self.argv,
            device=self.device,
            seed=self.options.seed,
            models=self.loaded,
            data=self.datasets,
            seconds=time.perf_counter() - self.started,
            status=status,
            world_size=distributed.world_size(),
            failures=self.failures,
        )
        meta["options"] = recorded(self.options)
        meta["models_done"] = list(self.done)
        meta["choices"] = self.choices
        meta["columns"] = self.declared
        meta["csv_sha256"] = csv_sha
        meta["kept_from_previous"] = (self.previous.describe(sorted(set(kept["model"])))
                                      if self.previous is not None and len(kept) else None)
        write_json(meta, self.json_path)


@dataclass
class Previous:
    """What an earlier run left in the output folder: its rows and its record."""

    rows: pd.DataFrame
    record: dict

    @classmethod
    def read(cls, csv_path: Path, json_path: Path) -> Previous | None:
        try:
            rows = pd.read_csv(csv_path)
            record = json.loads(json_path.read_text())
        except (OSError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError):
            return None  # nothing there, or nothing that can be trusted
        return cls(rows, record) if isinstance(record, dict) else None

    def describe(self, models: list[str]) -> dict:
        return {"models": models, "argv": self.record.get("argv"), "status": self.record.get("status"),
                "finished": self.record.get("finished")}


def _format_float(value: float) -> str:
    if value == 0 or not math.isfinite(value):
        return str(value)
    return f"{value:.4g}" if abs(value) >= 1e-3 else f"{value:.3e}"
