"""vitprobe's throughput against timm's benchmark loop, interleaved in one process.

timm's ``benchmark.py`` is not shipped with the pip package, so its inference loop
(``InferenceBenchmarkRunner.run``: ``torch.no_grad``, warm-up steps, then timed steps each
timed on their own, samples/s = samples / wall time of the timed loop) is restated here
from its source. Both sides run on the same model, batch and thread count, alternating,
so the ratio survives a machine shared with other work.

    python benchmarks/throughput.py [--rounds 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import timm
import torch

from vitprobe.report.files import write_text
from vitprobe.throughput import measure_throughput

MODELS = (("vit_tiny_patch16_224", 16), ("resnet18", 16))


def timm_style(model: torch.nn.Module, batch: int, warmup: int, steps: int) -> float:
    """Images per second as timm's InferenceBenchmarkRunner measures them (CPU branch)."""
    inputs = torch.randn(batch, 3, 224, 224)
    with torch.no_grad():
        for _ in range(warmup):
            model(inputs)
        start = time.perf_counter()
        for _ in range(steps):
            model(inputs)
        elapsed = time.perf_counter() - start
    return batch * steps / elapsed


def markdown(frame: pd.DataFrame) -> str:
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in row) + " |"
            for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name, batch in MODELS:
        model = timm.create_model(name, pretrained=False).eval()
        for round_ in range(args.rounds):
            ours = measure_throughput(model, batch_size=batch, warmup=args.warmup,
                                      steps=args.steps).images_per_second
            theirs = timm_style(model, batch, args.warmup, args.steps)
            rows.append({"model": name, "round": round_, "vitprobe": ours, "timm_loop": theirs})
    frame = pd.DataFrame(rows)
    summary = frame.groupby("model", sort=False)[["vitprobe", "timm_loop"]].median()
    summary["ratio"] = summary["vitprobe"] / summary["timm_loop"]
    text = (f"# Throughput: vitprobe vs timm's benchmark loop\n\n"
            f"CPU, {args.threads} threads, fp32, batch 16, 224x224, warm-up {args.warmup}, "
            f"{args.steps} timed steps, median of {args.rounds} interleaved rounds "
            f"(images/s).\n\n{markdown(summary.reset_index())}\n\nAll rounds:\n\n"
            f"{markdown(frame)}\n")
    path = Path(__file__).parent / "results" / "throughput.md"
    write_text(path, text)
    print(text)


if __name__ == "__main__":
    main()
