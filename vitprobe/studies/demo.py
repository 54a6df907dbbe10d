"""``vitprobe demo``: run the embedded demo study and state what it measured.

Every measured sentence is read off the CSVs the study produced. The literature's claims are
quoted beside them, each with whether this run agrees, as measured, never assumed. An analysis
that did not run (or whose CSV lacks the needed rows) is said to be missing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd

from vitprobe.models.demo import SAM_TWINS
from vitprobe.studies.recipe import SHIPPED, Recipe, parse_recipe, recipe_path
from vitprobe.studies.runner import Outcome

DEMO_RECIPE = SHIPPED / "demo.toml"


def demo_recipe(path: str | Path = DEMO_RECIPE) -> Recipe:
    """The demo study: the recipe shipped in the package unless another is given."""
    return parse_recipe(recipe_path(path))


def _read(out: Path, name: str) -> pd.DataFrame | None:
    path = out / f"{name}.csv"
    try:
        return pd.read_csv(path)
    except (OSError, pd.errors.EmptyDataError):
        return None


def _first_layer(frame: pd.DataFrame | None, model: str) -> str:
    """The first layer ``model`` has rows for ("" when there are none)."""
    if frame is None:
        return ""
    layers = frame[frame["model"] == model]["layer"]
    return str(layers.iloc[0]) if len(layers) else ""


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
    for base, sam in SAM_TWINS:
        if base in leading and sam in leading:
            verb = "lowers" if leading[sam] < leading[base] else "does not lower"
            lines.append(f"  SAM {verb} it for {base.split(':')[1]}: "
                         f"{leading[base]:.4g} -> {leading[sam]:.4g}")
    return lines


def _curves(frame: pd.DataFrame | None) -> dict[str, pd.DataFrame]:
    """Per model, the lambda_1 rows ``vitprobe track`` wrote, in step order."""
    if frame is None:
        return {}
    rows = frame[frame["metric"] == "lambda_1"].sort_values("step", kind="stable")
    return {str(model): group for model, group in rows.groupby("model", sort=False)}


def track_facts(out: Path) -> list[str]:
    frame = _read(out, "track")
    if frame is None:
        return ["sharpness while training: not measured (no track.csv)"]
    lines = ["lambda_1 while training (vitprobe track; first -> largest -> last check, 2/lr at the last):"]
    for model, group in _curves(frame).items():
        start = "warm-started" if group["warm_start"].all() else "cold-started"
        lines.append(f"  {model}: {group['value'].iloc[0]:.4g} -> {group['value'].max():.4g} -> "
                     f"{group['value'].iloc[-1]:.4g} over {int(group['step'].iloc[-1])} steps "
                     f"(2/lr {group['eos_threshold'].iloc[-1]:.4g}); {int(group['hvps'].sum())} HVPs in "
                     f"{len(group)} {start} checks")
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


def _claim(text: str, source: str, agrees: bool | None, measured: str) -> str:
    verdict = "not measured" if agrees is None else ("agrees" if agrees else "does NOT agree")
    return f"  {text} ({source}): this run {verdict}" + (f" ({measured})" if measured else "")


def _per_layer(frame: pd.DataFrame | None, metric: str) -> dict[str, list[float]]:
    """Per model, ``metric`` averaged over heads, in layer order."""
    if frame is None:
        return {}
    rows = frame[frame["metric"] == metric]
    return {model: list(group.groupby("layer", sort=False)["value"].mean())
            for model, group in rows.groupby("model", sort=False)}


def _spread(frame: pd.DataFrame | None, first: str, second: str) -> str:
    """``--subsets``' lambda_1 means of two models with their intervals, and whether the intervals
    overlap ("" when the run measured no spread)."""
    if frame is None or "ci_low" not in frame:
        return ""
    rows = frame[(frame["metric"] == "eigenvalue_mean") & (frame["k"] == 1)].set_index("model")
    if first not in rows.index or second not in rows.index:
        return ""
    a, b = rows.loc[first], rows.loc[second]
    overlap = a["ci_low"] <= b["ci_high"] and b["ci_low"] <= a["ci_high"]
    return (f"; over the subsets {a['value']:.4g} [{a['ci_low']:.4g}, {a['ci_high']:.4g}] vs {b['value']:.4g} "
            f"[{b['ci_low']:.4g}, {b['ci_high']:.4g}]: the 95% intervals "
            + ("overlap, so this run cannot tell them apart" if overlap else "do not overlap"))


def literature_claims(out: Path) -> list[str]:
    """The literature's claims, each beside what this run measured and whether it agrees."""
    sharpness = _read(out, "sharpness")
    leading = _values(sharpness, "eigenvalue", k=1) if sharpness is not None else {}
    lines = ["Against the literature:"]
    vit, resnet = leading.get("demo:vit"), leading.get("demo:resnet")
    lines.append(_claim("ViTs sit in sharper minima than ResNets", "Chen, Hsieh & Gong 2021: "
                        "lambda_max 738.8 for ViT-B/16 vs 179.8 for ResNet-152",
                        None if vit is None or resnet is None else vit > resnet,
                        "" if vit is None or resnet is None else
                        f"lambda_1 {vit:.4g} vs {resnet:.4g}" + _spread(sharpness, "demo:vit", "demo:resnet")))
    for base, sam in SAM_TWINS:
        known = base in leading and sam in leading
        lines.append(_claim(f"SAM finds flatter minima ({base.split(':')[1]})", "Foret et al. 2020; "
                            "Chen, Hsieh & Gong 2021", leading[sam] < leading[base] if known else None,
                            f"lambda_1 {leading[base]:.4g} -> {leading[sam]:.4g}" if known else ""))
    tracked = {model: float(group["value"].iloc[-1]) for model, group in _curves(_read(out, "track")).items()}
    vit, resnet = tracked.get("demo:vit"), tracked.get("demo:resnet")
    lines.append(_claim("ViTs are sharper than ResNets, tracked while training", "Chen, Hsieh & Gong 2021",
                        None if vit is None or resnet is None else vit > resnet,
                        "" if vit is None or resnet is None else
                        f"lambda_1 at the last tracked step {vit:.4g} vs {resnet:.4g}"))
    for base, sam in SAM_TWINS:
        known = base in tracked and sam in tracked
        lines.append(_claim(f"SAM trains to a flatter point ({base.split(':')[1]}, tracked)", "Foret et al. 2020",
                            tracked[sam] < tracked[base] if known else None,
                            f"lambda_1 at the last tracked step {tracked[base]:.4g} (AdamW) vs "
                            f"{tracked[sam]:.4g} (SAM)" if known else ""))
    for model, layers in _per_layer(_read(out, "attention"), "mean_attention_distance").items():
        lines.append(_claim(f"attention distance grows with depth ({model})", "Dosovitskiy et al. 2020, "
                            "Fig. 7", layers[-1] > layers[0], f"{layers[0]:.1f} px first layer, "
                            f"{layers[-1]:.1f} px last"))
    fields = _read(out, "receptive-field")
    for model, layers in _per_layer(fields, "mean_distance").items():
        lines.append(_claim(f"the effective receptive field grows with depth ({model})", "Luo et al. 2016",
                            layers[-1] > layers[0], f"{layers[0]:.1f} px first layer, {layers[-1]:.1f} px last"))
    if fields is not None:
        theory = fields[fields["metric"] == "theoretical_size"]
        side = fields[(fields["metric"] == "square_side") & (fields["threshold"] == 0.99)]
        merged = theory.merge(side, on=["model", "layer"], suffixes=("_theory", "_side"))
        for model, group in merged.groupby("model", sort=False):
            smaller = bool((group["value_side"] <= group["value_theory"]).all()
                           and group["value_side"].iloc[-1] < group["value_theory"].iloc[-1])
            lines.append(_claim(f"the effective receptive field lies within the theoretical one and is "
                                f"smaller at the last stage ({model})",
                                "Luo et al. 2016", smaller, f"99 % of the gradient mass within "
                                f"{group['value_side'].iloc[-1]:.0f} px of a {group['value_theory'].iloc[-1]:.0f} px "
                                "field at the last stage"))
    corruptions = _read(out, "corruptions")
    mce = _values(corruptions, "mce") if corruptions is not None else {}
    for base, sam in SAM_TWINS:
        known = base in mce and sam in mce
        lines.append(_claim(f"SAM makes {base.split(':')[1]} more robust to corruptions", "Chen, Hsieh "
                            "& Gong 2021, ImageNet-C", mce[sam] < mce[base] if known else None,
                            f"mCE {mce[base]:.2f} -> {mce[sam]:.2f}" if known else ""))
    quality = _read(out, "map-quality")
    if quality is not None:
        negative = quality[quality["metric"] == "negative_perturbation_auc"]
        for model, group in negative.groupby("model", sort=False):
            by_method = dict(zip(group["method"], group["value"]))
            if {"rollout", "grad_rollout"} <= set(by_method):
                lines.append(_claim(f"gradient rollout is more faithful than rollout ({model})",
                                    "Chefer, Gur & Wolf 2021, negative perturbation",
                                    by_method["grad_rollout"] > by_method["rollout"],
                                    f"AUC {by_method['rollout']:.3f} -> {by_method['grad_rollout']:.3f}"))
    frequency = _read(out, "frequency")
    high = _per_layer(frequency, "high_frequency_log_amplitude")
    for model, layers in high.items():
        attention = _first_layer(frequency, model).startswith("blocks.")
        falls = layers[-1] < layers[0]
        lines.append(_claim(f"{'attention lowers' if attention else 'convolution raises'} the "
                            f"high-frequency amplitude of features through depth ({model})",
                            "Park & Kim 2022, Fig. 2b", falls if attention else not falls,
                            f"{layers[0]:.2f} first layer, {layers[-1]:.2f} last"))
    return lines


FACTS: tuple[Callable[[Path], list[str]], ...] = (
    accuracy_facts, sharpness_facts, track_facts, attention_facts, receptive_field_facts, literature_claims)


def findings(out: Path, outcomes: list[Outcome]) -> list[str]:
    """The measured facts of a finished demo study in ``out``, one statement per line."""
    lines = [f"What the demo study measured (results in {out}):"]
    missing = [o.analysis for o in outcomes if o.status in ("failed", "unavailable")]
    if missing:
        lines.append(f"missing analyses: {', '.join(missing)}")
    for fact in FACTS:
        lines += fact(out)
    return lines
