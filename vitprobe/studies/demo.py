"""``vitprobe demo``: run the embedded demo study and state what it measured.

Every sentence is read off the CSVs the study produced; nothing is taken from the papers.
An analysis that did not run (or whose CSV lacks the needed rows) is said to be missing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd

from vitprobe.studies.recipe import SHIPPED, Recipe, parse_recipe, recipe_path
from vitprobe.studies.runner import Outcome

DEMO_RECIPE = SHIPPED / "demo.toml"
PAIRS = (("demo:vit", "demo:vit-sam"), ("demo:resnet", "demo:resnet-sam"))


def demo_recipe(path: str | Path = DEMO_RECIPE) -> Recipe:
    """The demo study: the recipe shipped in the package unless another is given."""
    return parse_recipe(recipe_path(path))


def _read(out: Path, name: str) -> pd.DataFrame | None:
    path = out / f"{name}.csv"
    try:
        return pd.read_csv(path)
    except (OSError, pd.errors.EmptyDataError):
        return None


def _values(frame: pd.DataFrame, metric: str, **where: float) -> dict[str, float]:
    rows = frame[frame["metric"] == metric]
    for column, value in where.items():
        if column in rows:
            rows = rows[rows[column] == value]
    return {model: float(group["value"].iloc[0]) for model, group in rows.groupby("model", sort=False)}


def accuracy_facts(out: Path) -> list[str]:
    frame = _read(out, "evaluate")
    if frame is None:
        return ["accuracy: not measured (no evaluate.csv)"]
    top1 = frame[frame["metric"] == "top1"]
    return ["accuracy: " + "; ".join(
        f"{r.model} top-1 {r.value:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}]" for r in top1.itertuples())]


def sharpness_facts(out: Path) -> list[str]:
    frame = _read(out, "sharpness")
    leading = _values(frame, "eigenvalue", k=1) if frame is not None else {}
    if not leading:
        return ["sharpness: not measured (no leading eigenvalue in sharpness.csv)"]
    lines = ["leading Hessian eigenvalue: " + "; ".join(f"{m} {v:.4g}" for m, v in leading.items())]
    vit, resnet = leading.get("demo:vit"), leading.get("demo:resnet")
    if vit is not None and resnet is not None:
        side = "above" if vit > resnet else "not above"
        lines.append(f"  the demo ViT's leading eigenvalue is {side} the ResNet's "
                     f"({vit:.4g} vs {resnet:.4g}, ratio {vit / resnet:.2f})")
    for base, sam in PAIRS:
        if base in leading and sam in leading:
            verb = "lowers" if leading[sam] < leading[base] else "does not lower"
            lines.append(f"  SAM {verb} it for {base.split(':')[1]}: "
                         f"{leading[base]:.4g} -> {leading[sam]:.4g}")
    return lines


def attention_facts(out: Path) -> list[str]:
    frame = _read(out, "attention")
    if frame is None:
        return ["attention: not measured (no attention.csv)"]
    lines = []
    mass = frame[frame["metric"].str.startswith("rollout") & frame["metric"].str.contains("mass")]
    for (model, metric), group in mass.groupby(["model", "metric"], sort=False):
        lines.append(f"  {model}: {metric} = {group['value'].mean():.3f}")
    distance = frame[frame["metric"] == "mean_attention_distance"]
    for model, group in distance.groupby("model", sort=False):
        by_layer = group.groupby("layer")["value"].mean()
        lines.append(f"  {model}: mean attention distance by layer (px, mean over heads): "
                     + ", ".join(f"{v:.1f}" for v in by_layer))
    return ["attention rollout and distance:", *lines] if lines else [
        "attention: attention.csv has no rollout mass or attention distance rows"]


def receptive_field_facts(out: Path) -> list[str]:
    frame = _read(out, "receptive-field")
    if frame is None:
        return ["receptive fields: not measured (no receptive-field.csv)"]
    rows = frame[frame["metric"] == "mean_distance"]
    lines = []
    for model, group in rows.groupby("model", sort=False):
        lines.append(f"  {model}: " + ", ".join(
            f"{layer} {value:.1f}" for layer, value in zip(group["layer"], group["value"])))
    return ["effective receptive field, mean distance of gradient mass from the centre (px):",
            *lines] if lines else ["receptive fields: no mean_distance rows in receptive-field.csv"]


FACTS: tuple[Callable[[Path], list[str]], ...] = (
    accuracy_facts, sharpness_facts, attention_facts, receptive_field_facts)


def findings(out: Path, outcomes: list[Outcome]) -> list[str]:
    """The measured facts of a finished demo study in ``out``, one statement per line."""
    lines = [f"What the demo study measured (results in {out}):"]
    missing = [o.analysis for o in outcomes if o.status in ("failed", "unavailable")]
    if missing:
        lines.append(f"missing analyses: {', '.join(missing)}")
    for fact in FACTS:
        lines += fact(out)
    return lines
