"""Warm against cold starts of the SharpnessTracker, side by side on the same weights.

A check does not change training (tested), so one training run of each demo recipe (compressed to
``--steps``) feeds two trackers at every check: one warm-started from the previous eigenvector,
one from a random vector, on the same fixed training images and tolerance. Written to
``benchmarks/results/tracker.md``: products and seconds per check, lambda_1 of both.

    python benchmarks/tracker.py [--steps 300] [--every 50 10]
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import torch

import vitprobe
from vitprobe.models.demo import DEMO_ZOO, train
from vitprobe.report.files import write_text

OUT = Path(__file__).parent / "results" / "tracker.md"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["vit", "resnet"])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--every", type=int, nargs="+", default=[50, 10],
                        help="check intervals, all fed by the same training run; the first gets the per-check table")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    lines = [f"# SharpnessTracker: warm against cold starts ({torch.get_num_threads()} threads)", "",
             f"`python {' '.join(sys.argv)}`", "",
             "| model | step | lambda_1 warm | lambda_1 cold | HVPs warm | HVPs cold | s warm | s cold |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    totals = []
    for name in args.models:
        loaded = vitprobe.load_model(f"demo:{name}")
        data = vitprobe.load_data("shapes:train", loaded, num_images=args.images, batch_size=args.images)
        batch = (data.images(), data.labels())
        pairs = {every: [vitprobe.SharpnessTracker(every=every, warm_start=warm, label=name) for warm in (True, False)]
                 for every in args.every}

        def check(step: int, module: torch.nn.Module, lr: float) -> None:
            for pair in pairs.values():
                for tracker in pair:
                    tracker(step, module, batch, lr=lr)

        train(replace(DEMO_ZOO[name], steps=args.steps), after_step=check)
        for every, pair in pairs.items():
            warm, cold = (t.result() for t in pair)
            if every == args.every[0]:
                for i, step in enumerate(warm.steps):
                    lines.append(f"| demo:{name} | {step} | {warm.lambda_1[i]:.4g} | {cold.lambda_1[i]:.4g} | "
                                 f"{warm.hvps[i]} | {cold.hvps[i]} | {warm.check_seconds[i]:.2f} | "
                                 f"{cold.check_seconds[i]:.2f} |")
            worst = max(abs(w - c) / abs(c) for w, c in zip(warm.lambda_1, cold.lambda_1))
            totals.append(f"- demo:{name}, a check every {every} steps ({len(warm.steps)} checks): after the first, "
                          f"{sum(warm.hvps[1:])} HVPs warm against {sum(cold.hvps[1:])} cold "
                          f"({sum(warm.hvps[1:]) / sum(cold.hvps[1:]):.2f}x), {sum(warm.check_seconds[1:]):.1f} s "
                          f"against {sum(cold.check_seconds[1:]):.1f} s; lambda_1 agree to {worst:.1e}")
    write_text(args.out, "\n".join([*lines, "", *totals]) + "\n")


if __name__ == "__main__":
    main()
