"""``python -m vitprobe landscape``: 1-D and 2-D loss slices, resumable and sharded.

Writes ``landscape.csv`` (model, alpha, beta, metric = loss | accuracy, value),
``landscape.npz`` (per model i: ``alphas_i``, ``betas_i``, ``loss_i``, ``accuracy_i`` with
rows beta and columns alpha, ``cosine_i``; ``models`` lists the labels) and figures. Every
finished point goes at once to ``<out>/landscape.parts/<model>/``, so ``--resume`` continues
an interrupted run. ``--shard i/n`` jobs write only their part files; run the same command
with ``--resume`` and without ``--shard`` afterwards to merge them (nothing is recomputed).
"""

from __future__ import annotations

import argparse
import re
from dataclasses import replace

import numpy as np
import pandas as pd

from vitprobe import distributed
from vitprobe.command import DEMO_ZOO, TRAINING_DATA, Command, RunContext
from vitprobe.errors import UserError
from vitprobe.landscape.engine import BN_STATS, KINDS, loss_landscape
from vitprobe.landscape.figures import plot_contours, plot_curves, plot_heatmaps, plot_surfaces
from vitprobe.landscape.result import LandscapeResult
from vitprobe.landscape.schedule import parse_shard
from vitprobe.report.files import atomic_write

DEFAULT_GRID = "21x21"
DEFAULT_NUM_IMAGES = 64
DEFAULT_SPAN = {"random": "1", "eigen": "1", "interpolate": "-0.5:1.5"}
# with no --model, interpolation runs from each AdamW demo model to its SAM twin
DEMO_PAIRS = (("demo:vit", "demo:vit-sam"), ("demo:resnet", "demo:resnet-sam"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("landscape")
    group.add_argument("--directions", choices=KINDS, default="random",
                       help="random: filter-normalised Gaussian (Li et al. 2018); eigen: top Hessian "
                            "eigenvectors; interpolate: the line to --to (default: random)")
    group.add_argument("--to", action="append", metavar="SPEC",
                       help="second checkpoint for --directions interpolate, one per --model "
                            "(default with no --model: each AdamW demo model to its SAM twin)")
    group.add_argument("--grid", default=DEFAULT_GRID, metavar="AxB|N",
                       help=f"alphas x betas for a 2-D surface, or N for a 1-D curve (default: {DEFAULT_GRID})")
    group.add_argument("--span", metavar="LOW:HIGH|R",
                       help="alpha range LOW:HIGH (e.g. -1:1), or a radius R for "
                            "-R:R (default: 1; -0.5:1.5 for interpolate)")
    group.add_argument("--beta-span", metavar="LOW:HIGH|R", help="beta range (default: the alpha range)")
    group.add_argument("--include-bn", action="store_true",
                       help="move biases and normalisation parameters too (default: zero there, "
                            "Li et al.'s biasbn)")
    group.add_argument("--bn-stats", choices=BN_STATS,
                       help="BatchNorm running statistics at each point: keep theta0's, interpolate "
                            "between the checkpoints, or recalibrate on the data (default: keep; "
                            "interpolate for --directions interpolate)")
    group.add_argument("--resume", action="store_true",
                       help="reuse the points already in <out>/landscape.parts for the same arguments")
    group.add_argument("--shard", metavar="I/N",
                       help="compute only the points k with k %% N == I (job arrays); merge with a "
                            "final run with --resume and no --shard")


def model_pairs(ctx: RunContext) -> list[tuple[str, str | None]]:
    """(model spec, --to spec or None) for every landscape to compute."""
    args = ctx.args
    if args.directions != "interpolate":
        if args.to:
            raise UserError("--to is only for --directions interpolate")
        return [(spec, None) for spec in ctx.model_specs]
    if not args.model and not args.to:
        return list(DEMO_PAIRS)
    if not args.to or len(args.to) != len(ctx.model_specs):
        raise UserError(f"--directions interpolate needs one --to per --model "
                        f"({len(ctx.model_specs)} models, {len(args.to or [])} --to)")
    return list(zip(ctx.model_specs, args.to))


def run(ctx: RunContext) -> None:
    args = ctx.args
    shard = parse_shard(args.shard)
    span = args.span or DEFAULT_SPAN[args.directions]
    results: list[LandscapeResult] = []
    folders: set[str] = set()
    for index, (spec, to_spec) in enumerate(model_pairs(ctx)):
        with ctx.isolated(spec):
            model = ctx.load_model(spec, index)
            target = ctx.load_model(to_spec) if to_spec else None
            label = model.label if target is None else f"{model.label}->{target.label}"
            folder = _unique(_slug(label), folders)
            result = loss_landscape(model, ctx.data(model), directions=args.directions, grid=args.grid, span=span,
                                    beta_span=args.beta_span, to=target, seed=args.seed,
                                    include_bn=args.include_bn, bn_stats=args.bn_stats,
                                    store=ctx.out / "landscape.parts" / folder, resume=args.resume,
                                    shard=shard, label=label)
            if shard is not None:
                ctx.log(f"{label}: shard {shard[0]}/{shard[1]} computed {result.info['computed']} points; when "
                        "every shard is done, run the same command with --resume and without --shard to merge")
                continue
            results.append(replace(result, directions=[]))  # the figures need only the surfaces
            ctx.add_rows(result.to_frame())
            _write_npz(ctx, results)
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


def _figures(ctx: RunContext, results: list[LandscapeResult]) -> None:
    ctx.save_figure(plot_curves(results), "landscape-curves")
    if not results[0].is_1d:
        ctx.save_figure(plot_contours(results), "landscape-contour")
        ctx.save_figure(plot_heatmaps(results), "landscape-heatmap")
        ctx.save_figure(plot_surfaces(results), "landscape-surface")


def _write_npz(ctx: RunContext, results: list[LandscapeResult]) -> None:
    if not distributed.is_main():
        return
    arrays: dict[str, np.ndarray] = {"models": np.array([r.model for r in results])}
    for i, r in enumerate(results):
        arrays.update({f"alphas_{i}": r.alphas, f"betas_{i}": r.betas, f"loss_{i}": r.loss,
                       f"accuracy_{i}": r.accuracy,
                       f"cosine_{i}": np.array(np.nan if r.cosine is None else r.cosine)})

    def write(path) -> None:
        with open(path, "wb") as handle:
            np.savez(handle, **arrays)

    atomic_write(ctx.out / "landscape.npz", write)


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_") or "model"


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
    add_arguments=add_arguments,
    run=run,
    default_models=DEMO_ZOO,
    default_num_images=DEFAULT_NUM_IMAGES,
    default_batch_size=64,
    default_data=TRAINING_DATA,
)]
