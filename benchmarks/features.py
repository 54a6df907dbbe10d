"""The cost of the analyses that compare ViTs and CNNs inside and under corruption, as a ratio to a
forward pass of the same model and images: layer similarity (CKA), feature frequency, the
per-block Hessian spectrum, accuracy under the 15 ImageNet-C corruptions at 5 severities, and
the quality of one method's maps (localisation and perturbation).

Each side runs interleaved with the forward pass in one process (forward, analysis, forward,
...), so machine contention hits them alike; the ratio of the medians is reported.

    OMP_NUM_THREADS=1 python benchmarks/features.py [--repeats 5] [--out benchmarks/results/features.md]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch

from vitprobe.attention import explain, map_quality
from vitprobe.data import load_data
from vitprobe.features import feature_frequency, layer_similarity
from vitprobe.models import load_model
from vitprobe.report.files import write_text
from vitprobe.robustness import corruption_accuracy
from vitprobe.sharpness import block_spectrum

MODELS = ("demo:vit", "demo:resnet")
IMAGES = 64


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "features.md")
    args = parser.parse_args()
    lines = [
        "# Inside the model and under corruption: cost against a forward pass",
        "",
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, CPU, fp32; {IMAGES} shapes images in batches of 32; "
        f"{args.repeats} interleaved repeats, medians of wall time. The per-block spectrum runs one "
        "Lanczos (tol 1e-3) per block, each product a forward and two backward passes over the "
        "images. The corruptions (15 x 5, each a pass over the images) are mostly imagecorruptions' "
        "own CPU work (glass blur above all). Map quality judges one method's maps (Grad-CAM, computed "
        "once, not timed): 2 x 33 deletion and insertion passes and 2 x 10 perturbation passes.",
        "",
        "| model | forward (s) | similarity / forward | frequency / forward | per-block Hessian / forward "
        "| corruptions / forward | map quality / forward |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for spec in MODELS:
        model = load_model(spec)
        data = load_data("shapes", model, num_images=IMAGES, batch_size=32)
        maps = explain(model, data, "gradcam")  # judged, not timed

        def forward() -> None:
            with torch.inference_mode():
                for images, _ in data:
                    model.module(images)

        sides = {"forward": forward, "similarity": lambda: layer_similarity(model, data),
                 "frequency": lambda: feature_frequency(model, data),
                 "blocks": lambda: block_spectrum(model, data),
                 "corruptions": lambda: corruption_accuracy(model, data),
                 "quality": lambda: map_quality(model, data, maps=maps)}
        for fn in sides.values():  # warm-up
            fn()
        times: dict[str, list[float]] = {name: [] for name in sides}
        for _ in range(args.repeats):
            for name, fn in sides.items():
                times[name].append(timed(fn))
        median = {name: statistics.median(values) for name, values in times.items()}
        ratio = {name: f"{median[name] / median['forward']:.1f}x" for name in median}
        lines.append(f"| {spec} | {median['forward']:.4f} | {ratio['similarity']} | {ratio['frequency']} | "
                     f"{ratio['blocks']} | {ratio['corruptions']} | {ratio['quality']} |")
        print(lines[-1], flush=True)
    write_text(args.out, "\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
