"""The lecture's scale on a GPU: ViT-B/16 and ResNet-152 sharpness, maps and landscapes.

Random-initialised full-size architectures (timing needs no weights) on ``shapes`` images at
224 px, for each model:
- lambda_1 and the top 5 over ``--images`` images at tol 1e-3 (vitprobe's Lanczos), and PyHessian's
  power iteration on the same model and images for lambda_1;
- lambda_1 again with TF32 matmuls allowed, and its relative difference from float32;
- Hutch++ trace with 100 products;
- maps per second (rollout for the ViT, Grad-CAM for the ResNet) against a forward pass;
- a 21x21 loss landscape over 256 images against 441 forward passes over them;
- peak GPU memory of each step, and how the operator kept its products (kept graphs, images per
  backward, basis on the device or the host).
It writes ``benchmarks/results/gpu.md`` with the device's name. ``--smoke`` runs the same code on
the CPU with tiny timm models and a few images (the tests run it).

    python benchmarks/gpu.py [--images 1000] [--out benchmarks/results/gpu.md]
    python benchmarks/gpu.py --smoke --out /tmp/gpu.md
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import timm
import torch

from vitprobe import attention_rollout, attributions, load_data, loss_landscape
from vitprobe.models import as_loaded
from vitprobe.report.files import write_text
from vitprobe.sharpness import HessianOperator
from vitprobe.sharpness.loss import cross_entropy
from vitprobe.sharpness.pyhessian_peer import PyHessianRun
from vitprobe.sharpness.spectrum import spectrum_of
from vitprobe.sharpness.trace import trace_of

FULL = {"vit": "vit_base_patch16_224", "cnn": "resnet152"}
SMOKE = {"vit": "test_vit", "cnn": "test_resnet"}


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Step:
    """Wall seconds and peak GPU memory (GB) of a block."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def __enter__(self) -> Step:
        synchronise(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        synchronise(self.device)
        self.seconds = time.perf_counter() - self.started
        self.peak = (torch.cuda.max_memory_allocated(self.device) / 2**30 if self.device.type == "cuda"
                     else float("nan"))


def forward_seconds(module, batches, device) -> float:
    with Step(device) as step, torch.inference_mode():
        for images, _ in batches:
            module(images)
    return step.seconds


def benchmark(kind: str, name: str, args, device: torch.device) -> list[dict]:
    torch.manual_seed(0)
    model = as_loaded(timm.create_model(name, pretrained=False, num_classes=4).to(device).eval())
    batch = 4 if args.smoke else 64
    data = load_data("shapes:train", model, num_images=args.images, batch_size=batch, device=device)
    rows = []

    def add(what: str, step: Step, value: float, unit: str, note: str = "") -> None:
        rows.append({"model": name, "measure": what, "value": value, "unit": unit,
                     "seconds": step.seconds, "peak_gb": step.peak, "note": note})

    with Step(device) as step:
        operator = HessianOperator(model, data)
        top1 = spectrum_of(operator, k=1, tol=1e-3)
    add("lambda_1", step, float(top1.eigenvalues[0]), "", f"{top1.total_hvps} products; {top1.choices}")
    with Step(device) as step:
        top5 = spectrum_of(operator, k=5, tol=1e-3)
    add("top-5 lambda_5", step, float(top5.eigenvalues[-1]), "", f"{top5.total_hvps} products")
    with Step(device) as step:
        trace = trace_of(operator, num_probes=100 if not args.smoke else 6)
    add("Hutch++ trace", step, trace.trace, "", f"{trace.hvps} products, s.e. {trace.std_error:.3g}")
    operator.release()
    with Step(device) as step:
        tf32 = spectrum_of(HessianOperator(model, data, allow_tf32=True), k=1, tol=1e-3)
    difference = abs(float(tf32.eigenvalues[0]) - float(top1.eigenvalues[0])) / abs(float(top1.eigenvalues[0]))
    add("lambda_1 with TF32", step, float(tf32.eigenvalues[0]), "", f"relative difference {difference:.2e}")
    with Step(device) as step:
        params = [p for p in model.module.parameters() if p.requires_grad]
        peer = PyHessianRun(model.module, list(data), cross_entropy, params)
        values, _ = peer.eigenvalues(k=1, tol=1e-3, max_iter=100)
    add("PyHessian lambda_1", step, values[0], "", f"{peer.hvps} products")

    maps_data = data if args.smoke else data.rebatch(batch)
    forward = forward_seconds(model.module, maps_data, device)
    with Step(device) as step:
        maps = (attention_rollout(model, maps_data) if kind == "vit"
                else attributions(model, maps_data, method="gradcam"))
    add(f"{maps.method} maps/s", step, len(maps.maps) / step.seconds, "images/s",
        f"{step.seconds / forward:.2f}x a forward pass")

    grid = 3 if args.smoke else 21
    landscape_data = load_data("shapes:train", model, num_images=min(256, args.images), batch_size=batch,
                               device=device)
    forward = forward_seconds(model.module, landscape_data, device)
    with Step(device) as step:
        loss_landscape(model, landscape_data, directions="random", grid=(grid, grid), seed=0)
    add(f"{grid}x{grid} landscape", step, step.seconds / (grid * grid * forward), "x points x forward")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny models on the CPU (for tests)")
    parser.add_argument("--images", type=int, help="images for the eigenvalues (default: 1000; smoke 8)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu.md"))
    args = parser.parse_args()
    args.images = args.images or (8 if args.smoke else 1000)
    device = torch.device("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
    if device.type == "cpu" and not args.smoke:
        parser.error("no CUDA device: run with --smoke, or on a GPU")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (smoke run)"
    rows = [row for kind, model in (SMOKE if args.smoke else FULL).items()
            for row in benchmark(kind, model, args, device)]
    lines = [f"# vitprobe at scale on {name}", "",
             f"torch {torch.__version__}; {args.images} shapes images at each model's resolution; "
             "random-initialised weights.", "",
             "| model | measure | value | unit | seconds | peak GPU memory (GB) | note |",
             "| --- | --- | ---: | --- | ---: | ---: | --- |"]
    lines += [f"| {r['model']} | {r['measure']} | {r['value']:.4g} | {r['unit']} | {r['seconds']:.2f} | "
              f"{r['peak_gb']:.2f} | {r['note']} |" for r in rows]
    write_text(args.out, "\n".join(lines) + "\n")
    print(args.out.read_text())


if __name__ == "__main__":
    main()
