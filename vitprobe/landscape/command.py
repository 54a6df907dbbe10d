"""``python -m vitprobe landscape``: 1-D and 2-D loss slices, resumable and sharded.

Writes ``landscape.csv`` (model, alpha, beta, metric = loss | accuracy, value),
``landscape.npz`` (per model i: ``alphas_i``, ``betas_i``, ``loss_i``, ``accuracy_i`` with
rows beta and columns alpha, ``cosine_i``; ``models`` lists the labels) and figures. Every
finished point goes at once to ``<out>/landscape.parts/<model>/``, so ``--resume`` continues
an interrupted run. ``--shard i/n`` jobs write only their part files; run the same command
with ``--resume`` and without ``--shard`` afterwards to merge them (nothing is recomputed).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from vitprobe import distributed
from vitprobe.command import Command, RunContext
from vitprobe.errors import UserError
from vitprobe.landscape.engine import BN_STATS, KINDS, landscape_label
from vitprobe.landscape.figures import plot_contours, plot_curves, plot_heatmaps, plot_surfaces
from vitprobe.landscape.grid import parse_span
from vitprobe.landscape.result import LandscapeResult
from vitprobe.landscape.resumable import resumable_landscape
from vitprobe.models.demo import SAM_TWINS
from vitprobe.options import TRAINING_DATA, SharedOptions, option
from vitprobe.report.files import atomic_write, slug

DEFAULT_GRID = "21x21"
DEFAULT_SPAN = {"random": "1", "eigen": "1", "interpolate": "-0.5:1.5"}


@dataclass(kw_only=True)
class LandscapeOptions(SharedOptions):
    """``vitprobe landscape``: directions, grid and spans as text, BatchNorm policy, part files."""

    NUM_IMAGES: ClassVar[int] = 64
    DATA: ClassVar[str] = TRAINING_DATA

    directions: str = option("random", "random: filter-normalised Gaussian (Li et al. 2018); eigen: "
                                       "top Hessian eigenvectors; interpolate: the line to --to "
                                       "(default: random)", choices=KINDS)
    to: list[str] | None = option(help="second checkpoint for --directions interpolate, one per "
                                       "--model (default with no --model: each AdamW demo model to "
                                       "its SAM twin)", action="append", metavar="SPEC")
    grid: str = option(DEFAULT_GRID, f"alphas x betas for a 2-D surface, or N for a 1-D curve "
                                     f"(default: {DEFAULT_GRID})", metavar="AxB|N")
    span: str | None = option(help="alpha range LOW:HIGH (e.g. -1:1), or a radius R for -R:R "
                                   "(default: 1; -0.5:1.5 for interpolate)", metavar="LOW:HIGH|R")
    beta_span: str | None = option(help="beta range (default: the alpha range)", metavar="LOW:HIGH|R")
    include_bn: bool = option(False, "move biases and normalisation parameters too (default: zero "
                                     "there, Li et al.'s biasbn)")
    bn_stats: str | None = option(help="BatchNorm running statistics at each point: keep theta0's, "
                                       "interpolate between the checkpoints, or recalibrate on the "
                                       "data (default: keep; interpolate for --directions "
                                       "interpolate)", choices=BN_STATS)
    resume: bool = option(False, "reuse the points already in <out>/landscape.parts for the same "
                                 "arguments")
    shard: str | None = option(help="compute only the points k with k %% N == I (job arrays); merge "
                                    "with a final run with --resume and no --shard", metavar="I/N")


    def check(self) -> None:
        super().check()
        grid_counts(self.grid)
        for value, name in ((self.span, "--span"), (self.beta_span, "--beta-span")):
            if value is not None:
                span_bounds(value, name)
        shard_pair(self.shard)
        if self.bn_stats == "interpolate" and self.directions != "interpolate":
            raise UserError("--bn-stats interpolate needs --directions interpolate (there is no "
                            "second checkpoint to interpolate towards); use keep or recalibrate")


def grid_counts(text: str) -> tuple[int, ...]:
    """``--grid 51x41`` -> (51, 41); ``--grid 101`` -> (101,)."""
    try:
        return tuple(int(part) for part in text.lower().split("x"))
    except ValueError:
        raise UserError(f"--grid must look like 51x51 or 101, got {text!r}") from None


def span_bounds(text: str, flag: str) -> tuple[float, float]:
    """``--span -1:1`` -> (-1.0, 1.0); a radius ``--span 2`` -> (-2.0, 2.0)."""
    try:
        return parse_span([float(part) for part in text.split(":")])
    except (ValueError, UserError):
        raise UserError(f"{flag} is LOW:HIGH with LOW < HIGH, or a radius R for -R:R; got "
                        f"{text!r}") from None


def shard_pair(text: str | None) -> tuple[int, int] | None:
    """``--shard 1/4`` -> (1, 4)."""
    if text is None:
        return None
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise UserError(f"--shard must look like 0/4, got {text!r}") from None
    if not 0 <= index < count:
        raise UserError(f"--shard i/n needs 0 <= i < n, got {text!r}")
    return index, count


def model_pairs(ctx: RunContext[LandscapeOptions]) -> list[tuple[str, str | None]]:
    """(model spec, --to spec or None) for every landscape to compute."""
    args = ctx.options
    if args.directions != "interpolate":
        if args.to:
            raise UserError("--to is only for --directions interpolate")
        return [(spec, None) for spec in ctx.model_specs]
    if not args.model and not args.to:
        return list(SAM_TWINS)  # each AdamW demo model to its SAM twin
    if not args.to or len(args.to) != len(ctx.model_specs):
        raise UserError(f"--directions interpolate needs one --to per --model "
                        f"({len(ctx.model_specs)} models, {len(args.to or [])} --to)")
    return list(zip(ctx.model_specs, args.to))


def run(ctx: RunContext[LandscapeOptions]) -> None:
    args = ctx.options
    shard = shard_pair(args.shard)
    span = span_bounds(args.span or DEFAULT_SPAN[args.directions], "--span")
    beta_span = span_bounds(args.beta_span, "--beta-span") if args.beta_span else None
    results: list[LandscapeResult] = []
    folders: set[str] = set()
    for index, (spec, to_spec) in enumerate(model_pairs(ctx)):
        with ctx.isolated(spec):
            model = ctx.load_model(spec, index)
            target = ctx.load_model(to_spec) if to_spec else None
            label = landscape_label(model, target)
            folder = _unique(slug(label), folders)
            result = resumable_landscape(
                model, ctx.data(model), store=ctx.out / "landscape.parts" / folder,
                resume=args.resume, shard=shard, directions=args.directions,
                grid=grid_counts(args.grid), span=span, beta_span=beta_span, to=target,
                seed=args.seed, include_bn=args.include_bn, bn_stats=args.bn_stats)
            if shard is not None:
                ctx.log(f"{label}: shard {shard[0]}/{shard[1]} computed {result.info['computed']} points; when "
                        "every shard is done, run the same command with --resume and without --shard to merge")
            else:
                results.append(replace(result, directions=[]))  # the figures need only the surfaces
                ctx.add_rows(result.to_frame())
                _write_npz(ctx, results)
        ctx.finished(spec)
    ctx.require_a_model()
    if results:
        ctx.print_table(summary(results).assign(data=ctx.data_spec))
        _figures(ctx, results)


def summary(results: list[LandscapeResult]) -> pd.DataFrame:
    """One row per landscape: the centre, the extremes and the directions' cosine."""
    return pd.DataFrame([{
        "model": r.model, "directions": r.kind, "points": r.loss.size,
        "center_loss": r.center["loss"], "center_accuracy": r.center["accuracy"],
        "min_loss": float(np.nanmin(r.loss)), "max_loss": float(np.nanmax(r.loss)),
        "cosine_d1_d2": r.cosine if r.cosine is not None else float("nan"),
    } for r in results])


def _figures(ctx: RunContext[LandscapeOptions], results: list[LandscapeResult]) -> None:
    ctx.save_figure(plot_curves(results), "landscape-curves")
    if not results[0].is_1d:
        ctx.save_figure(plot_contours(results), "landscape-contour")
        ctx.save_figure(plot_heatmaps(results), "landscape-heatmap")
        ctx.save_figure(plot_surfaces(results), "landscape-surface")


def _write_npz(ctx: RunContext[LandscapeOptions], results: list[LandscapeResult]) -> None:
    if not distributed.is_main():
        return
    arrays: dict[str, Any] = {"models": np.array([r.model for r in results])}  # Any: numpy's savez stub
    for i, r in enumerate(results):
        arrays.update({f"alphas_{i}": r.alphas, f"betas_{i}": r.betas, f"loss_{i}": r.loss,
                       f"accuracy_{i}": r.accuracy,
                       f"cosine_{i}": np.array(np.nan if r.cosine is None else r.cosine)})

    def write(path) -> None:
        with open(path, "wb") as handle:
            np.savez(handle, **arrays)

    atomic_write(ctx.out / "landscape.npz", write)


def _unique(name: str, taken: set[str]) -> str:
    candidate, n = name, 2
    while candidate in taken:
        candidate, n = f"{name}-{n}", n + 1
    taken.add(candidate)
    return candidate


COMMANDS = [Command(
    name="landscape",
    help="1-D and 2-D loss landscapes along filter-normalised random directions, Hessian "
         "eigenvectors, or the line between two checkpoints (Li et al. 2018)",
    options=LandscapeOptions,
    run=run,
)]
