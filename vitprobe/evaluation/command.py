"""``python -m vitprobe evaluate``: accuracy, loss and calibration with confidence intervals."""

from __future__ import annotations

import argparse

from vitprobe.command import Command, RunContext
from vitprobe.evaluation.evaluate import evaluate
from vitprobe.evaluation.figures import reliability_figure


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("evaluate")
    group.add_argument("--top-k", type=int, nargs="+", default=[1, 5], metavar="K",
                       help="top-k accuracies to report (default: 1 5; a k not below the number "
                            "of classes is skipped)")
    group.add_argument("--ece-bins", type=int, default=15, metavar="M",
                       help="equal-width confidence bins of the ECE (default: 15)")
    group.add_argument("--bootstrap", type=int, default=1000, metavar="R",
                       help="bootstrap resamples for the loss and ECE intervals (default: 1000)")
    group.add_argument("--confidence", type=float, default=0.95,
                       help="confidence level of every interval (default: 0.95)")


def run(ctx: RunContext) -> None:
    args, results = ctx.args, []
    for model in ctx.models():
        with ctx.isolated(model.label):
            result = evaluate(model, ctx.data(model), top_k=args.top_k, num_bins=args.ece_bins,
                              bootstrap_samples=args.bootstrap, confidence=args.confidence,
                              seed=args.seed)
            if result.skipped_top_k:
                ctx.log(f"{model.label}: top-{', '.join(map(str, result.skipped_top_k))} skipped: "
                        f"the model has only {result.num_classes} classes")
            frame = result.to_frame()
            ctx.add_rows(frame)
            ctx.print_table(frame[["model", "metric", "value", "ci_low", "ci_high"]])
            results.append(result)
    ctx.save_figure(reliability_figure(results), "reliability")


COMMANDS = [Command(
    name="evaluate",
    help="top-1/top-5 accuracy (Wilson intervals), mean loss and ECE (bootstrap intervals)",
    add_arguments=add_arguments,
    run=run,
    default_num_images=512,
    default_batch_size=128,
)]
