"""``vitprobe corruptions``: accuracy under the ImageNet-C corruptions, and mCE against a baseline."""

from __future__ import annotations

from dataclasses import dataclass

from vitprobe.command import Command, RunContext
from vitprobe.models.loaded import LoadedModel
from vitprobe.options import SharedOptions, option
from vitprobe.robustness.corruption import CorruptionResult, corruption_accuracy, relative_to
from vitprobe.robustness.figures import severity_figure
from vitprobe.robustness.imagenet_c import CORRUPTIONS, SEVERITIES


@dataclass(kw_only=True)
class CorruptionOptions(SharedOptions):
    """``vitprobe corruptions``: which corruptions and severities, and the mCE baseline."""

    NUM_IMAGES = 128
    corruption: list[str] = option(list(CORRUPTIONS), "corruptions (default: the 15 of ImageNet-C)",
                                   choices=CORRUPTIONS, metavar="NAME")
    severity: list[int] = option(list(SEVERITIES), "severities (default: 1 2 3 4 5)",
                                 choices=SEVERITIES, metavar="S")
    baseline: str | None = option(help="the model corruption errors are relative to (default: the "
                                       "first --model)", metavar="SPEC")


def run(ctx: RunContext[CorruptionOptions]) -> None:
    """The baseline is measured first: --baseline (loaded on its own unless it is the first
    --model), else the first --model that could be measured."""
    args = ctx.options

    def measure(model: LoadedModel) -> CorruptionResult:
        return corruption_accuracy(model, ctx.data(model), corruptions=args.corruption,
                                   severities=args.severity, seed=args.seed)

    baseline = None
    if args.baseline is not None and args.baseline != ctx.model_specs[0]:
        baseline = measure(ctx.load_model(args.baseline))
    results = []
    for model in ctx.models():
        with ctx.isolated(model.label):
            ctx.log(f"corruptions: {model.label}, {len(args.corruption)} corruptions x "
                    f"{len(args.severity)} severities")
            result = measure(model)
            baseline = baseline or result
            result = relative_to(result, baseline)
            frame = result.to_frame()
            ctx.add_rows(frame)
            ctx.print_table(frame[frame.metric.isin(("clean_top1", "corrupted_top1", "mce"))][
                ["model", "metric", "value", "baseline"]])
            results.append(result)
    if results:
        ctx.save_figure(severity_figure(results), "corruptions")


COMMANDS = [Command(name="corruptions", help="top-1 accuracy under the ImageNet-C corruptions at "
                    "severities 1-5 (Hendrycks & Dietterich 2019), and mCE against a baseline model",
                    options=CorruptionOptions, run=run)]
