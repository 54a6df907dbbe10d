"""``python -m vitprobe evaluate``: accuracy, loss and calibration with confidence intervals."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from vitprobe.command import Command, RunContext
from vitprobe.evaluation.evaluate import evaluate
from vitprobe.evaluation.figures import reliability_figure
from vitprobe.options import SharedOptions, option


@dataclass(kw_only=True)
class EvaluateOptions(SharedOptions):
    """``vitprobe evaluate``: which top-k accuracies, and how the intervals are made."""

    NUM_IMAGES: ClassVar[int] = 512
    BATCH_SIZE: ClassVar[int] = 128

    top_k: list[int] = option([1, 5], "top-k accuracies to report (default: 1 5; a k not below "
                                      "the number of classes is skipped)", metavar="K")
    ece_bins: int = option(15, "equal-width confidence bins of the ECE (default: 15)", metavar="M")
    bootstrap: int = option(1000, "bootstrap resamples for the loss and ECE intervals (default: "
                                  "1000)", metavar="R")
    confidence: float = option(0.95, "confidence level of every interval (default: 0.95)")


def run(ctx: RunContext[EvaluateOptions]) -> None:
    args, results = ctx.options, []
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
    options=EvaluateOptions,
    run=run,
)]
