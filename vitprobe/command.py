"""What a subcommand is, and the context it runs in.

Each analysis package has a ``command.py`` that defines ``COMMAND = Command(...)``. The CLI
adds the shared options, builds a :class:`RunContext`, and calls ``COMMAND.run(ctx)``. A
command computes through the analysis API and hands rows and figures to the context, which
writes ``<out>/<name>.csv`` (rewritten atomically after every ``add_rows``, so an
interrupted run keeps what it finished), ``<out>/<name>.json`` and ``<out>/figures/``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from vitprobe import distributed
from vitprobe.data.batches import Batches
from vitprobe.errors import UserError
from vitprobe.models.input_config import InputOverrides
from vitprobe.models.loaded import LoadedModel
from vitprobe.progress import log
from vitprobe.report.files import write_csv, write_json
from vitprobe.report.metadata import run_metadata

DEMO_ZOO = ("demo:vit", "demo:resnet", "demo:vit-sam", "demo:resnet-sam")


@dataclass(frozen=True)
class Command:
    """One ``python -m vitprobe NAME`` subcommand."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[["RunContext"], None]
    default_models: tuple[str, ...] = DEMO_ZOO
    default_num_images: int = 256
    default_batch_size: int = 64


@dataclass
class RunContext:
    """Loads models and data for a command and writes what it produces."""

    command: Command
    args: argparse.Namespace
    argv: list[str]
    device: torch.device
    out: Path
    started: float = field(default_factory=time.perf_counter)
    rows: list[pd.DataFrame] = field(default_factory=list)
    loaded: list[LoadedModel] = field(default_factory=list)
    datasets: dict[str, Batches] = field(default_factory=dict)
    failures: list[dict[str, str]] = field(default_factory=list)

    # -- inputs -------------------------------------------------------------------------
    @property
    def model_specs(self) -> list[str]:
        return list(self.args.model or self.command.default_models)

    @property
    def num_images(self) -> int:
        return self.args.num_images or self.command.default_num_images

    @property
    def batch_size(self) -> int:
        return self.args.batch_size or self.command.default_batch_size

    @property
    def input_overrides(self) -> InputOverrides:
        """``--input-size``, ``--mean``, ``--std``, ``--interpolation``, ``--crop-pct``, ``--in-chans``."""
        args = self.args
        size = args.input_size
        if size is not None and len(size) not in (1, 2):
            raise UserError(f"--input-size takes S or H W, got {len(size)} values")
        return InputOverrides(
            input_size=(size[0], size[-1]) if size else None,
            mean=tuple(args.mean) if args.mean else None, std=tuple(args.std) if args.std else None,
            interpolation=args.interpolation, crop_pct=args.crop_pct, in_chans=args.in_chans)

    def load_model(self, spec: str, index: int | None = None) -> LoadedModel:
        """Load ``spec`` with the run's options; ``index`` picks the ``--model-args`` of the
        ``--model`` at that position."""
        from vitprobe.models import load_model

        model = load_model(
            spec,
            allow_download=self.args.allow_download,
            trust_checkpoint=self.args.trust_checkpoint,
            device=self.device,
            model_args=(self.args.model_args or {}).get(index),
            input=self.input_overrides,
        )
        self.loaded.append(model)
        return model

    def models(self) -> Iterator[LoadedModel]:
        """Each ``--model`` (or the command's default models), loaded one at a time. With several
        models, one that cannot be loaded is reported and skipped (see :meth:`isolated`)."""
        for index, spec in enumerate(self.model_specs):
            model = None
            with self.isolated(spec):
                model = self.load_model(spec, index)
            if model is not None:
                yield model

    @contextmanager
    def isolated(self, label: str) -> Iterator[None]:
        """Work on one model: with several models a user error is reported on one line, kept
        for the JSON and the exit status, and the other models still run."""
        try:
            yield
        except UserError as error:
            if len(self.model_specs) == 1:
                raise
            print(f"vitprobe {self.command.name}: error: {label}: {error}", file=sys.stderr, flush=True)
            self.failures.append({"model": label, "error": str(error)})

    def data(self, model: LoadedModel, num_images: int | None = None,
             input_size: tuple[int, int] | None = None) -> Batches:
        """The ``--data`` images preprocessed for ``model``, on the run's device."""
        from vitprobe.data import load_data

        batches = load_data(
            self.args.data,
            model,
            class_names=self.args.class_names,
            num_images=num_images or self.num_images,
            batch_size=self.batch_size,
            seed=self.args.seed,
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

    def add_rows(self, frame: pd.DataFrame) -> None:
        """Append tidy rows and rewrite the command's CSV at once (rank 0 only)."""
        self.rows.append(frame)
        if distributed.is_main():
            write_csv(self.table(), self.csv_path)

    def table(self) -> pd.DataFrame:
        return pd.concat(self.rows, ignore_index=True) if self.rows else pd.DataFrame()

    def save_figure(self, figure, name: str) -> Path | None:
        """Write a matplotlib figure to ``<out>/figures/<name>.<format>`` and close it."""
        import matplotlib.pyplot as plt

        from vitprobe.report.files import atomic_write

        path = self.out / "figures" / f"{name}.{self.args.format}"
        if distributed.is_main():
            atomic_write(path, lambda tmp: figure.savefig(tmp, format=self.args.format,
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

    def write_metadata(self, status: str) -> None:
        if not distributed.is_main():
            return
        meta = run_metadata(
            command=self.command.name,
            argv=self.argv,
            device=self.device,
            seed=self.args.seed,
            models=self.loaded,
            data=self.datasets,
            seconds=time.perf_counter() - self.started,
            status=status,
            world_size=distributed.world_size(),
            failures=self.failures,
        )
        write_json(meta, self.json_path)


def _format_float(value: float) -> str:
    if value == 0 or not math.isfinite(value):
        return str(value)
    return f"{value:.4g}" if abs(value) >= 1e-3 else f"{value:.3e}"
