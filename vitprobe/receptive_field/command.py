"""``python -m vitprobe receptive-field``: effective and theoretical receptive fields, side by
side."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import pandas as pd

from vitprobe.command import Command, RunContext
from vitprobe.data.batches import Batches
from vitprobe.models.loaded import LoadedModel
from vitprobe.options import SharedOptions, option
from vitprobe.receptive_field.effective import (
    CENTRES,
    GRADIENT_RULES,
    SCALES,
    SCORE_ON,
    at_input_size,
    default_layers,
    effective_receptive_field,
)
from vitprobe.receptive_field.figures import erf_heatmaps, extent_figure
from vitprobe.receptive_field.result import ReceptiveFieldResult

SUMMARY_THRESHOLD = 0.5


@dataclass(kw_only=True)
class ReceptiveFieldOptions(SharedOptions):
    """``vitprobe receptive-field``: which layers, and the RepLKNet protocol's choices."""

    NUM_IMAGES: ClassVar[int] = 50
    BATCH_SIZE: ClassVar[int] = 25

    layer: list[str] | None = option(
        help="module to measure, repeatable, in every model (default: each feature stage of a CNN, "
             "e.g. layer1..layer4 of a ResNet, each block of a ViT); --input-size renders the "
             "images at another size", action="append", metavar="NAME")
    gradient: str = option("relu", "element-wise rule on the input gradient before the channel sum "
                                   "(default: relu, as RepLKNet's script)",
                           choices=tuple(GRADIENT_RULES))
    scale: str = option("log", "display scaling: log10(x + 1) or x ** exponent, then / max "
                               "(default: log)", choices=SCALES)
    exponent: float = option(0.5, "exponent of --scale power (default: 0.5)")
    objective_relu: bool = option(True, "ReLU each channel of the centre unit before summing "
                                        "(default: on)")
    score_on: str = option("scaled", "map the scores read: the scaled one (RepLKNet) or the raw "
                                     "mean gradient (default: scaled)", choices=SCORE_ON)
    centre: str = option("field", "pixel the scores are measured around: the centre of the "
                                  "measured unit's field, or the map's centre as RepLKNet "
                                  "(default: field)", choices=CENTRES)


def _attention_distance(model: LoadedModel, data: Batches,
                        size: tuple[int, int]) -> pd.DataFrame | None:
    """Mean attention distance per layer and head of a ViT, if the attention analysis exists."""
    try:
        from vitprobe.attention import mean_attention_distance
    except ImportError:
        return None
    return mean_attention_distance(at_input_size(model, size), data).to_frame()


def _attention_rows(model: LoadedModel, frame: pd.DataFrame) -> pd.DataFrame:
    """The head-averaged mean attention distance per block, as receptive-field rows named by block."""
    rows = frame[frame["metric"] == "layer_attention_distance"]
    names = default_layers(model)
    layers = [names[i] if len(names) == len(rows) else str(i) for i in rows["layer"]]
    frame = rows.assign(layer=layers, metric="mean_attention_distance", threshold=math.nan).drop(
        columns=["head"])
    frame.attrs.update(index=["metric", "layer", "threshold"], reported=["mean_attention_distance"])
    return frame


def summary_table(table: pd.DataFrame) -> pd.DataFrame:
    """One line per model and layer: the main numbers at threshold 0.5."""
    wanted = table[(table["threshold"] == SUMMARY_THRESHOLD) | table["threshold"].isna()]
    wide = wanted.pivot_table(index=["model", "layer"], columns="metric", values="value",
                              sort=False)
    columns = [c for c in ("theoretical_size", "theoretical_jump", "square_side",
                           "square_area_ratio", "mass_radius", "mean_distance",
                           "mean_attention_distance") if c in wide.columns]
    renamed = {"square_side": "side@0.5", "square_area_ratio": "area@0.5",
               "mass_radius": "radius@0.5"}
    return wide[columns].rename(columns=renamed).reset_index()


def run(ctx: RunContext[ReceptiveFieldOptions]) -> None:
    args = ctx.options
    results: list[ReceptiveFieldResult] = []
    distances: dict[str, pd.DataFrame] = {}
    for model in ctx.models():
        with ctx.isolated(model.label):
            size = model.input_size
            data = ctx.data(model, input_size=size)
            ctx.log(f"{model.label}: effective receptive field on {data.num_images} images at "
                    f"{size[0]}x{size[1]}")
            result = effective_receptive_field(
                model, data, layer=args.layer, gradient=args.gradient, objective_relu=args.objective_relu,
                scale=args.scale, exponent=args.exponent, score_on=args.score_on,
                centre=args.centre)
            ctx.add_rows(result.to_frame())
            results.append(result)
            if model.family == "vit":
                frame = _attention_distance(model, data, size)
                if frame is not None:
                    distances[model.label] = frame
                    ctx.add_rows(_attention_rows(model, frame))
    ctx.save_figure(erf_heatmaps(results), "receptive-field-erf")
    ctx.save_figure(extent_figure(results, distances), "receptive-field-extent")
    ctx.print_table(summary_table(ctx.table()))


COMMANDS = [
    Command(
        name="receptive-field",
        help="effective receptive field (RepLKNet protocol) per stage/block, its scores, the "
             "theoretical field of CNN layers, and the mean attention distance of ViTs",
        options=ReceptiveFieldOptions,
        run=run,
    )
]
