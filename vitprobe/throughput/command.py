"""``python -m vitprobe throughput``: inference images per second, timm-benchmark style."""

from __future__ import annotations

import argparse

from vitprobe.command import Command, RunContext
from vitprobe.throughput.measure import DTYPES, measure_throughput


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("throughput")
    group.add_argument("--precision", choices=tuple(DTYPES), default="fp32",
                       help="cast model and inputs to this dtype (default: fp32; fp16 needs a GPU)")
    group.add_argument("--channels-last", action="store_true", help="NHWC memory format")
    group.add_argument("--compile", action="store_true", help="torch.compile the model first")
    group.add_argument("--warmup", type=int, default=10, metavar="N",
                       help="untimed warm-up steps (default: 10)")
    group.add_argument("--steps", type=int, default=50, metavar="N",
                       help="timed steps (default: 50)")


def run(ctx: RunContext) -> None:
    args = ctx.args
    for model in ctx.models():
        with ctx.isolated(model.label):
            result = measure_throughput(
                model, batch_size=ctx.batch_size, precision=args.precision,
                channels_last=args.channels_last, compile=args.compile, device=ctx.device,
                warmup=args.warmup, steps=args.steps)
            frame = result.to_frame()
            ctx.add_rows(frame)
            ctx.print_table(frame[["model", "metric", "value", "device", "dtype", "batch",
                                   "resolution", "threads"]])


COMMANDS = [Command(
    name="throughput",
    help="inference images/s on synthetic inputs (eval, inference mode, warm-up, synchronised)",
    add_arguments=add_arguments,
    run=run,
    default_batch_size=256,
)]
