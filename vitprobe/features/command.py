"""``vitprobe similarity``: CKA between layers, within a model or against another;
``vitprobe frequency``: the relative log amplitude of each layer's features at high frequency."""

from __future__ import annotations

from dataclasses import dataclass

from vitprobe.command import Command, RunContext
from vitprobe.features.figures import cka_heatmaps, frequency_figure
from vitprobe.features.frequency import feature_frequency
from vitprobe.features.similarity import layer_similarity
from vitprobe.options import SharedOptions, option

LAYER_HELP = ("layer to read, repeatable (default: every block of a ViT, every feature stage of "
              "a CNN)")


@dataclass(kw_only=True)
class SimilarityOptions(SharedOptions):
    """``vitprobe similarity``: which layers, and the model to compare against."""

    layer: list[str] | None = option(help=LAYER_HELP, action="append", metavar="NAME")
    against: str | None = option(help="compare every --model's layers with this model's, on the "
                                      "same images (default: each model with itself)",
                                 metavar="SPEC")


def run_similarity(ctx: RunContext[SimilarityOptions]) -> None:
    args = ctx.options
    other = ctx.load_model(args.against) if args.against else None
    results = []
    for model in ctx.models():
        with ctx.isolated(model.label):
            data = ctx.data(model)
            other_data = ctx.data(other) if other is not None else None
            result = layer_similarity(model, data, layers=args.layer, other=other,
                                      other_data=other_data)
            ctx.add_rows(result.to_frame())
            ctx.log(f"{model.label}: CKA of {len(result.layers)} x {len(result.other_layers)} layers "
                    f"on {result.images} images")
            results.append(result)
    if results:
        ctx.save_figure(cka_heatmaps(results), "cka")


@dataclass(kw_only=True)
class FrequencyOptions(SharedOptions):
    """``vitprobe frequency``: which layers."""

    layer: list[str] | None = option(help=LAYER_HELP, action="append", metavar="NAME")


def run_frequency(ctx: RunContext[FrequencyOptions]) -> None:
    results = []
    for model in ctx.models():
        with ctx.isolated(model.label):
            result = feature_frequency(model, ctx.data(model), layers=ctx.options.layer)
            frame = result.to_frame()
            ctx.add_rows(frame)
            ctx.print_table(frame[frame.metric == "high_frequency_log_amplitude"][
                ["model", "layer", "frequency", "value", "grid"]])
            results.append(result)
    if results:
        ctx.save_figure(frequency_figure(results), "frequency")


COMMANDS = [
    Command(name="similarity", help="linear CKA between layers (Kornblith et al. 2019), within a "
            "model or against another, accumulated over batches (unbiased HSIC)",
            options=SimilarityOptions, run=run_similarity),
    Command(name="frequency", help="relative log amplitude of each layer's Fourier-transformed "
            "features (Park & Kim 2022): attention is low-pass, convolution high-pass",
            options=FrequencyOptions, run=run_frequency),
]
