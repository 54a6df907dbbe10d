"""``python -m vitprobe throughput``: inference images per second, timm-benchmark style."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from vitprobe.command import Command, RunContext
from vitprobe.options import SharedOptions, option
from vitprobe.throughput.measure import DTYPES, measure_throughput


@dataclass(kw_only=True)
class ThroughputOptions(SharedOptions):
    """``vitprobe throughput``: precision, memory format, compilation and step counts."""

    BATCH_SIZE: ClassVar[int] = 256

    precision: str = option("fp32", "cast model and inputs to this dtype (default: fp32; fp16 "
                                    "needs a GPU)", choices=tuple(DTYPES))
    channels_last: bool = option(False, "NHWC memory format")
    compile: bool = option(False, "torch.compile the model first")
    warmup: int = option(10, "untimed warm-up steps (default: 10)", metavar="N")
    steps: int = option(50, "timed steps (default: 50)", metavar="N")


def run(ctx: RunContext[ThroughputOptions]) -> None:
    args = ctx.options
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
    options=ThroughputOptions,
    run=run,
)]
