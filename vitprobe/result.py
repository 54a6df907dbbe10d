"""The header and table shape that every analysis result shares.

A result is a dataclass: its arrays, the header (``model`` label, ``images`` measured, ``seconds``
of wall time, ``options`` the analysis ran with) and :meth:`Result.to_frame`, a tidy table with
one row per measured value. Each column of that table is declared: ``model``; the ``INDEX``
columns, which say what a value is (``metric``, ``k``, ``layer``, ``head``, ``threshold``,
``rho``, ``alpha``, ``beta``, ...); ``value`` and its uncertainty (``ci_low``, ``ci_high``,
``std_error``); and the ``ANNOTATIONS``, which say how it was obtained (``hvps``,
``residual``, ``method``, ``seconds``, ...). ``vitprobe report`` pivots on the index columns
only, and its default table shows the ``REPORTED`` metrics.
"""

from __future__ import annotations

import functools
import inspect
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import pandas as pd
import torch
from torch import nn

if TYPE_CHECKING:
    from matplotlib.figure import Figure

VALUE_COLUMNS = ("value", "ci_low", "ci_high", "std_error")
HEADER_ANNOTATIONS = ("images", "seconds")


@dataclass(kw_only=True)
class Result:
    """Header of every analysis result; subclasses declare their columns and give :meth:`rows`."""

    model: str
    images: int
    seconds: float = math.nan  # set by :func:`analysis`
    options: dict[str, Any] = field(default_factory=dict)  # set by :func:`analysis`

    INDEX: ClassVar[tuple[str, ...]] = ("metric",)
    ANNOTATIONS: ClassVar[tuple[str, ...]] = ()
    REPORTED: ClassVar[tuple[str, ...] | None] = None  # metrics in report's default table; None: all
    # report's column name of a metric, from its index columns: {"eigenvalue": "lambda_{k}"}
    LABELS: ClassVar[dict[str, str]] = {}
    TIMES_ITSELF: ClassVar[bool] = False  # True: ``seconds`` is the analysis's own measurement

    def rows(self) -> list[dict[str, Any]]:
        """One dict per measured value, holding index, value and annotation columns."""
        raise NotImplementedError

    @classmethod
    def columns(cls) -> tuple[str, ...]:
        """Every column :meth:`to_frame` may hold, in table order."""
        return ("model", *cls.INDEX, *VALUE_COLUMNS, *cls.ANNOTATIONS, *HEADER_ANNOTATIONS)

    def to_frame(self) -> pd.DataFrame:
        """The tidy table; ``frame.attrs`` holds the declaration (``index``, ``reported``)."""
        rows = self.rows()
        declared = self.columns()
        undeclared = sorted({key for row in rows for key in row} - set(declared))
        if undeclared:
            raise TypeError(f"{type(self).__name__} rows hold undeclared columns {undeclared}")
        header = {"model": self.model, "images": self.images, "seconds": self.seconds}
        frame = pd.DataFrame([{**header, **row} for row in rows], columns=None if rows else declared)
        frame = frame[[c for c in declared if c in frame.columns]]
        frame.attrs.update(declaration(type(self)))
        return frame

    def plot(self) -> Figure:
        """The figure the analysis's command draws for this result. A result whose command draws
        none gets its reported values as bars, with their intervals where it has them."""
        from vitprobe.report.figures import value_bars

        return value_bars(self.to_frame(), title=self.model)

    def _repr_html_(self) -> str:
        """The tidy table, for notebooks."""
        return self.to_frame().to_html(index=False, max_rows=60, float_format=lambda v: f"{v:.4g}")


def declaration(kind: type[Result]) -> dict[str, Any]:
    """What a table of ``kind`` declares: its index columns, its reported metrics and the column
    names of metrics in a report."""
    return {"index": list(kind.INDEX), "reported": None if kind.REPORTED is None else list(kind.REPORTED),
            "labels": dict(kind.LABELS)}


Function = TypeVar("Function", bound=Callable[..., Result])


def analysis(function: Function) -> Function:
    """Marks a public analysis ``f(model, data, *, options...) -> Result``: the result's header gets
    the wall time of the whole call and every option the call ran with (defaults included; where
    the analysis resolved an option, e.g. the layer Grad-CAM chose, the value it resolved to)."""
    signature = inspect.signature(function)

    @functools.wraps(function)
    def timed(*args: Any, **kwargs: Any) -> Result:
        started = time.perf_counter()
        result = function(*args, **kwargs)
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        if not result.TIMES_ITSELF:
            result.seconds = time.perf_counter() - started
        given = {name: plain(value) for name, value in bound.arguments.items() if name not in ("model", "data")}
        result.options = {**given, **result.options}
        return result

    return timed  # type: ignore[return-value]


def plain(value: Any) -> Any:
    """An option as JSON can hold it: numbers, strings, lists; a path, a non-finite number, a
    module, tensor or function by name."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # NaN is not JSON, and NaN != NaN would make equal options differ
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else f"tensor{tuple(value.shape)}"
    if isinstance(value, nn.Module):
        return type(value).__name__
    if isinstance(getattr(value, "label", None), str):  # a LoadedModel (e.g. the landscape's ``to``)
        return value.label
    return getattr(value, "__name__", repr(value))
