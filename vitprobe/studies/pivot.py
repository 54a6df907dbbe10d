"""``report``: one wide table (models x metrics) from the tidy CSVs of one or more runs.

Each metric column holds one value per model, with its uncertainty where the tidy rows
carry one: the standard error (``std_error``) or half the width of [ci_low, ci_high]. A metric
with several rows per model is split into one column per value of the *index* columns that
tell those rows apart (``k``, ``layer``, ``rho``, ...: what the run's JSON declares, see
:mod:`vitprobe.result`), e.g. ``sam_sharpness[rho=0.05]``, or named as the result declares
(``lambda_2`` for the eigenvalue with k = 2); annotation columns (``hvps``, ``residual``,
``seconds``, ...) never split a column. By default the metrics each result declares as
reported are shown; ``--pivot`` names others.
"""

from __future__ import annotations

import json
import math
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vitprobe.errors import UserError, first_line

REPORT_ORDER = ("throughput", "evaluate", "sharpness", "landscape", "receptive-field", "attention")
PARAMS = "params (M)"


@dataclass
class WideTable:
    """``values`` and ``errors`` (NaN where none) indexed by row label, one column per metric.

    ``kinds`` says per column what its error is: "ci" (half-width) or "stderr".
    """

    values: pd.DataFrame
    errors: pd.DataFrame
    kinds: dict[str, str]


def _order(path: Path) -> tuple[int, str]:
    rank = REPORT_ORDER.index(path.stem) if path.stem in REPORT_ORDER else len(REPORT_ORDER)
    return rank, path.stem


@dataclass
class Runs:
    """The tidy rows of every run (``run`` and ``analysis`` columns added), the index columns
    they declare, the metrics reported by default, and parameter counts by model label."""

    rows: pd.DataFrame
    index: list[str]
    reported: set[str]
    parameters: dict[str, int]
    labels: dict[str, str] = field(default_factory=dict)  # a metric's column name, from its index columns


def _sidecar(path: Path) -> dict:
    """The JSON beside a CSV ({} when there is none or it is not a run record)."""
    try:
        meta = json.loads(path.with_suffix(".json").read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def read_runs(dirs: list[Path]) -> Runs:
    """Every tidy CSV of every run folder, with what the JSON beside it declares: the columns,
    and the models' parameter counts."""
    frames, index, reported, parameters = [], [], set(), {}
    labels: dict[str, str] = {}
    for folder in dirs:
        if not folder.is_dir():
            raise UserError(f"{folder} is not a folder of vitprobe results")
        for path in sorted(folder.glob("*.csv"), key=_order):
            meta = _sidecar(path)
            declared = meta.get("columns")
            if not (isinstance(declared, dict) and isinstance(declared.get("index"), list)):
                continue
            for model in meta.get("models") or []:
                if isinstance(model, dict) and model.get("parameters") is not None:
                    parameters[model["label"]] = int(model["parameters"])
            try:
                frame = pd.read_csv(path)
            except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError, OSError) as error:
                raise UserError(f"cannot read {path}: {type(error).__name__}: {first_line(error)}") from None
            frames.append(frame.assign(run=str(folder), analysis=path.stem))
            index += [c for c in declared["index"] if c not in index]
            reported |= set(declared.get("reported") or [])
            labels.update(declared.get("labels") or {})
    if not frames:
        raise UserError(f"no vitprobe tables (a CSV with the JSON that declares its columns) in "
                        f"{', '.join(map(str, dirs))}")
    return Runs(pd.concat(frames, ignore_index=True), index, reported, parameters, labels)


def _uncertainty(rows: pd.DataFrame) -> tuple[pd.Series, str | None]:
    if "std_error" in rows and rows["std_error"].notna().any():
        return rows["std_error"].astype(float), "stderr"
    if {"ci_low", "ci_high"} <= set(rows.columns) and rows["ci_low"].notna().any():
        return (rows["ci_high"] - rows["ci_low"]).astype(float) / 2, "ci"
    return pd.Series(np.nan, index=rows.index), None


def _qualifiers(rows: pd.DataFrame, index: list[str]) -> list[str]:
    """Index columns whose values differ between rows of the same model (and run)."""
    candidates = [c for c in index if c != "metric" and c in rows and rows[c].notna().any()]
    groups = rows.groupby(["run", "model"], sort=False)
    return [c for c in candidates if (groups[c].nunique(dropna=False) > 1).any()]


def _plain(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _label(name: str, qualifiers: list[str], row: pd.Series, template: str | None = None) -> str:
    """The column of one row: the metric's declared name (``lambda_{k}`` -> ``lambda_2``) when
    its fields cover the qualifiers and the row has them, else ``metric[column=value,...]``."""
    if template is not None:
        fields = {field for _, field, _, _ in string.Formatter().parse(template) if field}
        if set(qualifiers) <= fields and all(f in row and pd.notna(row[f]) for f in fields):
            return template.format(**{f: _plain(row[f]) for f in fields})
    if not qualifiers:
        return name
    return f"{name}[{','.join(f'{column}={_plain(row[column])}' for column in qualifiers)}]"


def _row_labels(cells: pd.DataFrame) -> pd.Series:
    """Model labels; a model measured in several runs for the same column gets '(run)'."""
    runs = cells.groupby(["model", "column"])["run"].nunique()
    clashing = set(runs[runs > 1].index.get_level_values("model"))
    return cells.apply(lambda c: f"{c['model']} ({c['run']})" if c["model"] in clashing
                       else c["model"], axis=1)


def pivot(runs: Runs, metrics: list[str] | None = None) -> WideTable:
    """Models as rows, metrics as columns; ``metrics`` picks (and orders) the metrics (default:
    the reported ones).

    A metric may be named ``metric`` or ``analysis:metric`` (when two analyses share a
    metric name, their columns are labelled that way).
    """
    frame = runs.rows
    owners = frame.groupby("metric")["analysis"].nunique()
    frame = frame.assign(name=[f"{a}:{m}" if owners[m] > 1 else m
                               for a, m in zip(frame["analysis"], frame["metric"])])
    available = list(dict.fromkeys(frame["name"]))
    if metrics:
        unknown = [m for m in metrics if m not in available]
        if unknown:
            raise UserError(f"no metric {', '.join(map(repr, unknown))} in these runs; "
                            f"metrics: {', '.join(available)}")
        chosen = list(dict.fromkeys(metrics))
    else:
        chosen = [name for name, metric in dict(zip(frame["name"], frame["metric"])).items()
                  if metric in runs.reported]
        if not chosen:
            raise UserError(f"these runs report no metric by default; name some with --pivot: "
                            f"{', '.join(available)}")
    cells, kinds = [], {}
    for name in chosen:
        rows = frame[frame["name"] == name]
        errors, kind = _uncertainty(rows)
        qualifiers = _qualifiers(rows, runs.index)
        template = runs.labels.get(name)
        labels = [_label(name, qualifiers, row, template) for _, row in rows.iterrows()]
        cells.append(pd.DataFrame({"run": rows["run"], "model": rows["model"], "column": labels,
                                   "value": rows["value"].astype(float), "error": errors}))
        if kind:  # only columns where some value really carries an uncertainty
            kinds.update({label: kind for label, error in zip(labels, errors)
                          if math.isfinite(error) and error > 0})
    table = pd.concat(cells, ignore_index=True)
    table["row"] = _row_labels(table)
    rows_order = list(dict.fromkeys(table["row"]))
    columns_order = list(dict.fromkeys(table["column"]))
    values = table.pivot_table(index="row", columns="column", values="value", aggfunc="last",
                               dropna=False)
    errors = table.pivot_table(index="row", columns="column", values="error", aggfunc="last",
                               dropna=False)
    values = values.reindex(index=rows_order, columns=columns_order)
    errors = errors.reindex(index=rows_order, columns=columns_order)
    parameters = runs.parameters
    if parameters:
        models = table.drop_duplicates("row").set_index("row")["model"]
        counts = [parameters.get(models[row]) for row in rows_order]
        if any(c is not None for c in counts):
            values.insert(0, PARAMS, [c / 1e6 if c is not None else np.nan for c in counts])
            errors.insert(0, PARAMS, np.nan)
    values.index.name = errors.index.name = "model"
    values.columns.name = errors.columns.name = None
    return WideTable(values, errors, kinds)


def format_cell(value: float, error: float = math.nan, latex: bool = False) -> str:
    """``value ± error`` with the error to two significant digits; else 4 significant digits
    (whole numbers from 1000 up, never scientific notation there)."""
    if value is None or not math.isfinite(value):
        return ""
    if error is not None and math.isfinite(error) and error > 0:
        decimals = max(0, 1 - math.floor(math.log10(error)))
        pm = r" \pm " if latex else " ± "
        text = f"{value:.{decimals}f}{pm}{error:.{decimals}f}"
        return f"${text}$" if latex else text
    return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def legend(table: WideTable) -> str:
    """What ± means in each column."""
    parts = []
    for kind, words in (("ci", "half-width of the confidence interval"), ("stderr", "standard error")):
        columns = [c for c, k in table.kinds.items() if k == kind and c in table.values.columns]
        if columns:
            parts.append(f"{words} for {', '.join(columns)}")
    return "± is the " + "; the ".join(parts) + "." if parts else ""


def to_csv(table: WideTable) -> str:
    """Numbers unformatted; each column with an uncertainty is followed by ``<column>_err``."""
    out = pd.DataFrame(index=table.values.index)
    for column in table.values.columns:
        out[column] = table.values[column]
        if table.errors[column].notna().any():
            out[f"{column}_err"] = table.errors[column]
    return out.reset_index().to_csv(index=False)


def _cells(table: WideTable, latex: bool = False) -> list[list[str]]:
    return [[str(row)] + [format_cell(table.values.at[row, c], table.errors.at[row, c], latex)
                          for c in table.values.columns] for row in table.values.index]


def to_markdown(table: WideTable) -> str:
    header = ["model", *table.values.columns]
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in _cells(table)]
    note = legend(table)
    return "\n".join(lines) + ("\n\n" + note if note else "") + "\n"


def to_latex(table: WideTable) -> str:
    """A booktabs tabular from pandas' Styler, the uncertainty in the cell (``$v \\pm e$``)."""
    cells = pd.DataFrame(_cells(table, latex=True), columns=["model", *table.values.columns])
    styler = (cells.style.hide(axis="index").format_index(escape="latex", axis=1)
              .format(escape="latex", subset=["model"]))
    text = styler.to_latex(hrules=True, column_format="l" + "r" * (len(cells.columns) - 1))
    note = legend(table)
    return text + ("% " + note + "\n" if note else "")


FORMATTERS = {"csv": (to_csv, "csv"), "markdown": (to_markdown, "md"), "latex": (to_latex, "tex")}
