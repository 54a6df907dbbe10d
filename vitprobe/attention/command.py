"""``python -m vitprobe attention``: where each model looks, and how far its heads see."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd

from vitprobe.attention.attributions import ATTRIBUTION_METHODS, attributions
from vitprobe.attention.capture import attention_maps, select
from vitprobe.attention.distance import mean_attention_distance
from vitprobe.attention.figures import distance_figure, overlay_figure, quality_figure, raw_attention_figure
from vitprobe.attention.maps import SaliencyResult
from vitprobe.attention.methods import ATTENTION_METHODS, METHODS, attention_readable, explain
from vitprobe.attention.quality import map_quality, random_maps
from vitprobe.attention.rollout import HEAD_FUSIONS
from vitprobe.command import Command, RunContext
from vitprobe.data import rgb_pixels
from vitprobe.data.batches import Batches
from vitprobe.data.masks import object_masks
from vitprobe.errors import UserError
from vitprobe.models.loaded import LoadedModel
from vitprobe.options import SharedOptions, option
from vitprobe.report.files import slug

MAX_GRID = 6


@dataclass(kw_only=True)
class AttentionOptions(SharedOptions):
    """``vitprobe attention``: which map, rollout's settings, and the raw-attention grid."""

    NUM_IMAGES: ClassVar[int] = 32
    BATCH_SIZE: ClassVar[int] = 32

    method: str | None = option(
        help="map to draw (default: rollout for ViTs, Grad-CAM for models without attention); an "
             "attention method asked for on a CNN is refused",
        choices=ATTENTION_METHODS + ATTRIBUTION_METHODS)
    head_fusion: str = option("mean", "how rollout fuses heads (default: mean)", choices=HEAD_FUSIONS)
    discard: float = option(0.0, "rollout: fraction of the lowest patch entries dropped per row "
                                 "(default: 0)", metavar="R")
    start_layer: int = option(0, "first layer rolled out (default: 0)", metavar="L")
    source: str = option("cls", "token whose rollout map is drawn (default: cls)",
                         choices=("cls", "dist", "both"))
    layers: list[int] | None = option(help="layers of the raw-attention grid (default: all, at "
                                           "most 6)", metavar="L")
    heads: list[int] | None = option(help="heads of the raw-attention grid (default: all, at most 6)",
                                     metavar="H")
    query: tuple[int, int] | None = option(help="query patch of the raw-attention grid (default: "
                                                "the centre patch)", metavar=("ROW", "COL"))
    layer: list[str] | None = option(
        help="Grad-CAM layer of a CNN, repeatable (one map per layer; default: the last feature "
             "stage with at least 2x2 positions)", action="append", metavar="NAME")
    images: list[str] | None = option(help="image files to explain instead of --data", metavar="FILE")

    def check(self) -> None:
        super().check()
        if not 0.0 <= self.discard < 1.0:
            raise UserError(f"--discard must be in [0, 1), got {self.discard}")


def _data(ctx: RunContext[AttentionOptions], model: LoadedModel) -> Batches:
    if not ctx.options.images:
        return ctx.data(model)
    from vitprobe.data import load_data

    batches = load_data(ctx.options.images, model, num_images=None, batch_size=ctx.batch_size,
                        seed=ctx.options.seed, device=ctx.device)
    ctx.datasets[model.label] = batches
    return batches


def _some(indices: list[int] | None, count: int, what: str) -> list[int]:
    chosen = select(indices, count, what)
    if indices is None and count > MAX_GRID:
        chosen = sorted({round(i * (count - 1) / (MAX_GRID - 1)) for i in range(MAX_GRID)})
    return chosen


def run(ctx: RunContext[AttentionOptions]) -> None:
    args = ctx.options
    panels: list[SaliencyResult] = []
    distances = []
    display = None
    for model in ctx.models():
        with ctx.isolated(model.label):
            data = _data(ctx, model)
            if display is None:
                display = rgb_pixels(data[0][0], model).numpy()
            unreadable = attention_readable(model)
            if unreadable is None:
                result = explain(model, data, args.method or "rollout", head_fusion=args.head_fusion,
                                 discard=args.discard, start_layer=args.start_layer, source=args.source)
                distance = mean_attention_distance(model, data)
                ctx.add_rows(distance.to_frame())
                distances.append(distance)
                amodel = model.attention
                layers = _some(args.layers, amodel.num_layers, "layer")
                heads = _some(args.heads, amodel.num_heads, "head")
                first = data[0][0][:1]
                raw = attention_maps(model, first, layers=layers, heads=heads)
                query = ((args.query[0], args.query[1]) if args.query
                         else (raw.layout.grid[0] // 2, raw.layout.grid[1] // 2))
                ctx.save_figure(raw_attention_figure(raw, rgb_pixels(first, model)[0].numpy(), query),
                                f"raw_attention_{slug(model.label)}")
            else:
                if args.method in ATTENTION_METHODS:
                    raise UserError(f"--method {args.method}: {unreadable}")
                method = args.method or "gradcam"
                if args.method is None:
                    ctx.log(f"{model.label} has no attention layers: captum {method}")
                layers_given: list[str | None] = list(args.layer) if args.layer else [None]
                results = [attributions(model, data, method=method, layer=layer) for layer in layers_given]
                if method == "gradcam":
                    ctx.choices[model.label] = {"gradcam_layers": [r.options["layer"] for r in results]}
                result = results[-1]
                for extra in results[:-1]:
                    ctx.add_rows(extra.to_frame())
                    panels.append(extra)
            ctx.add_rows(result.to_frame())
            panels.append(result)
            ctx.log(f"{model.label}: {result.method} maps of {len(result.maps)} images")
    table = ctx.table()
    if not table.empty:
        shown = table[table.metric.isin(["mean_attention_distance"])]
        if not shown.empty:
            summary = (shown.groupby(["model", "layer"], as_index=False)["value"].mean()
                       .rename(columns={"value": "mean_over_heads_px"}))
            ctx.print_table(summary)
    if display is not None:  # some model ran (else AllModelsFailed ended the run)
        ctx.save_figure(overlay_figure(display, panels), "attention_overlay")
    if distances:
        ctx.save_figure(distance_figure(distances), "attention_distance")


@dataclass(kw_only=True)
class QualityOptions(SharedOptions):
    """``vitprobe map-quality``: which map methods, the object masks, the deletion steps."""

    NUM_IMAGES = 32
    BATCH_SIZE = 32
    method: list[str] | None = option(help="map methods to judge (default: every method the model "
                                           "supports); a random map is always added as the control",
                                      choices=METHODS, metavar="METHOD")
    masks: Path | None = option(help="folder of object masks, one image per image, named as it "
                                     "(shapes has its own); without masks only faithfulness is "
                                     "measured", metavar="DIR")
    steps: int = option(32, "pixel chunks of the deletion and insertion curves (default: 32)",
                        metavar="N")

    def check(self) -> None:
        super().check()
        if self.steps < 1:
            raise UserError(f"--steps must be at least 1, got {self.steps}")


def run_quality(ctx: RunContext[QualityOptions]) -> None:
    """Each method's maps, then :func:`map_quality` on them and on random maps (the control)."""
    args = ctx.options
    frames = []
    for model in ctx.models():
        with ctx.isolated(model.label):
            data = ctx.data(model)
            masks = _masks(ctx, data, model)
            unreadable = attention_readable(model)
            methods = args.method or [m for m in METHODS if unreadable is None or m not in ATTENTION_METHODS]
            if unreadable is not None and set(methods) & set(ATTENTION_METHODS):
                raise UserError(f"--method {', '.join(sorted(set(methods) & set(ATTENTION_METHODS)))}: "
                                f"{unreadable}")
            for index, method in enumerate(methods):
                maps = explain(model, data, method)
                if index == 0:
                    frames.append(_judge(ctx, model, data, random_maps(maps, args.seed), masks))
                frames.append(_judge(ctx, model, data, maps, masks))
    if frames:
        ctx.save_figure(quality_figure(pd.concat(frames, ignore_index=True)), "map-quality")


def _masks(ctx: RunContext[QualityOptions], data: Batches, model: LoadedModel) -> np.ndarray | None:
    """The object masks of ``data``: --masks, else shapes' own; None (faithfulness only) for
    other data without --masks."""
    if ctx.options.masks is None and data.spec.split(":")[0] != "shapes":
        ctx.log(f"{model.label}: no object masks for {data.spec} (give --masks DIR): faithfulness only")
        return None
    return object_masks(data, model, ctx.options.masks)


def _judge(ctx: RunContext[QualityOptions], model: LoadedModel, data: Batches, maps: SaliencyResult,
           masks: np.ndarray | None) -> pd.DataFrame:
    result = map_quality(model, data, maps=maps, masks=masks, steps=ctx.options.steps)
    frame = result.to_frame()
    ctx.add_rows(frame)
    ctx.print_table(frame[["model", "method", "metric", "value", "std_error"]])
    return frame


COMMANDS = [Command(
    name="attention",
    help="attention rollout / gradient rollout / raw maps, mean attention distance per head, "
         "and captum maps (Grad-CAM for CNNs) side by side",
    options=AttentionOptions,
    run=run,
), Command(
    name="map-quality",
    help="how good each map method is: mass in the object mask and pointing game, deletion and "
         "insertion (Petsiuk et al. 2018), positive and negative perturbation (Chefer et al. 2021), "
         "against a random map",
    options=QualityOptions,
    run=run_quality,
)]
