"""The lecture's sizes on this CPU: what each step costs for ViT-T/S/B/16 and ResNet-18/50/152 at 224 px.

Random-initialised timm architectures (timing needs no weights; 1000 classes) on ``shapes:train``
images resized to 224 px. For each model and image count it measures wall seconds and the peak
resident memory of the process during the step (the kernel's high-water mark, reset before each
step through ``/proc/self/clear_refs``):
- one gradient (forward + backward);
- one Hessian-vector product on kept graphs (the build is timed apart) and one recomputing them;
- lambda_1 by vitprobe's Lanczos at tol 1e-2, and PyHessian's power iteration on the same model and
  images (its own stopping rule at the same tol), each capped at 20 products (a cap reached is visible in the note), at 2 images by default;
- a 5x5 loss landscape; rollout (ViT) or Grad-CAM (ResNet) maps; CKA between the default layers.
Each (model, images) runs in a fresh process; rows accumulate in ``scale.json`` beside the table,
and a rerun measures only the configurations not yet there.
It fits the seconds of one recomputed HVP against parameters x images (log-log least squares) and
states what a 1,000-image lambda_1 would take from the products Lanczos needed, and writes
``benchmarks/results/scale.md`` with the command that made it.

    python benchmarks/scale.py                                  # every model at 2, 4, 8 images (~30 min)
    python benchmarks/scale.py --models vit_base_patch16_224 resnet152 --images 2
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F

from vitprobe import attention_rollout, attributions, layer_similarity, load_data, loss_landscape
from vitprobe.features.similarity import SMALLEST_BATCH
from vitprobe.models import as_loaded
from vitprobe.report.files import write_text
from vitprobe.sharpness import HessianOperator
from vitprobe.sharpness.loss import analysis_mode, cross_entropy
from vitprobe.sharpness.pyhessian_peer import PyHessianRun
from vitprobe.sharpness.spectrum import spectrum_of

MODELS = ("vit_tiny_patch16_224", "vit_small_patch16_224", "vit_base_patch16_224",
          "resnet18", "resnet50", "resnet152")
OUT = Path(__file__).parent / "results" / "scale.md"
MAX_PRODUCTS = 20  # per solver, so that the whole run fits in about 30 minutes on 2 cores


def peak_rss_gb() -> float:
    """The process's resident high-water mark since the last reset, in GB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / 1e9
    return float("nan")


class Step:
    """Wall seconds and peak resident memory (GB) of a block."""

    def __enter__(self) -> Step:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.started
        self.peak = peak_rss_gb()


def measure(name: str, images: int, solvers: bool) -> list[dict]:
    torch.manual_seed(0)
    model = as_loaded(timm.create_model(name, pretrained=False).eval())
    parameters = sum(p.numel() for p in model.module.parameters())
    data = load_data("shapes:train", model, num_images=images, batch_size=images)
    rows: list[dict] = []

    def add(what: str, step: Step, note: str = "") -> None:
        rows.append({"model": name, "parameters": parameters, "images": images, "measure": what,
                     "seconds": step.seconds, "peak_gb": step.peak, "note": note})

    x, y = next(iter(data))
    with Step() as step, analysis_mode(model.module):
        F.cross_entropy(model.module(x), y).backward()
    model.module.zero_grad(set_to_none=True)
    add("gradient", step)
    v = torch.randn(sum(p.numel() for p in model.module.parameters() if p.requires_grad))
    with Step() as step:
        kept = HessianOperator(model, data, keep_graphs=True)
    add("kept graphs: build", step)
    with Step() as step:
        kept.matvec(v)
    add("HVP, kept graphs", step)
    kept.release()
    del kept
    with Step() as step:
        recompute = HessianOperator(model, data, keep_graphs=False)
        recompute.matvec(v)
    add("HVP, recomputed", step, f"graph {recompute.memory.get('graph_bytes_per_image', 0) / 1e6:.0f} MB per image")
    if solvers:
        with Step() as step:
            ours = spectrum_of(HessianOperator(model, data), k=1, tol=1e-2, max_iter=MAX_PRODUCTS)
        add("lambda_1, vitprobe (tol 1e-2)", step, f"{ours.eigenvalues[0]:.4g}, {ours.total_hvps} HVPs"
            + ("" if ours.converged else f", not converged (residual {ours.residuals[0]:.1e})"))
        params = [p for p in model.module.parameters() if p.requires_grad]
        with Step() as step, analysis_mode(model.module):
            peer = PyHessianRun(model.module, list(data), cross_entropy, params)
            values, _ = peer.eigenvalues(k=1, tol=1e-2, max_iter=MAX_PRODUCTS)
        add("lambda_1, PyHessian (tol 1e-2)", step, f"{values[0]:.4g}, {peer.hvps} HVPs"
            + (", the cap" if peer.hvps >= MAX_PRODUCTS else ""))
    with Step() as step:
        loss_landscape(model, data, directions="random", grid=(5, 5), seed=0)
    add("5x5 landscape", step)
    with Step() as step:
        if model.family == "vit":
            attention_rollout(model, data)
        else:
            attributions(model, data, method="gradcam")
    add("rollout maps" if model.family == "vit" else "Grad-CAM maps", step)
    if images >= SMALLEST_BATCH:  # the unbiased HSIC needs 4 images a batch
        with Step() as step:
            layer_similarity(model, data)
        add("CKA, default layers", step)
    return rows


def exponent(rows: list[dict]) -> tuple[float, float]:
    """Least-squares fit of log(seconds per recomputed HVP) on log(parameters x images)."""
    hvp = [r for r in rows if r["measure"] == "HVP, recomputed"]
    size = np.log([r["parameters"] * r["images"] for r in hvp])
    seconds = np.log([r["seconds"] for r in hvp])
    slope, intercept = np.polyfit(size, seconds, 1)
    return float(slope), float(intercept)


def table(rows: list[dict], command: str) -> str:
    lines = [f"# vitprobe at the lecture's sizes on this CPU ({platform.processor() or platform.machine()}, "
             f"{torch.get_num_threads()} threads, torch {torch.__version__})", "",
             f"`{command}`", "",
             "| model | parameters | images | step | seconds | peak RSS (GB) | note |",
             "| --- | ---: | ---: | --- | ---: | ---: | --- |"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['parameters'] / 1e6:.1f}M | {r['images']} | {r['measure']} | "
                     f"{r['seconds']:.2f} | {r['peak_gb']:.2f} | {r['note']} |")
    if len({(r["parameters"], r["images"]) for r in rows if r["measure"] == "HVP, recomputed"}) > 1:
        slope, intercept = exponent(rows)
        lines += ["", f"Seconds per recomputed HVP grow as (parameters x images)^{slope:.2f} "
                      f"(log-log fit over every row above)."]
    lines += ["", "What a 1,000-image lambda_1 (tol 1e-2) would take, from the products Lanczos needed "
                  "here and the recomputed HVP's seconds per image (products are linear in images):", ""]
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        hvp = max((r for r in mine if r["measure"] == "HVP, recomputed"), key=lambda r: r["images"])
        solved = [r for r in mine if r["measure"].startswith("lambda_1, vitprobe")]
        if solved:
            products = int(solved[-1]["note"].split(", ")[1].split()[0])
            hours = products * hvp["seconds"] / hvp["images"] * 1000 / 3600
            lines.append(f"- {model}: {products} HVPs x {hvp['seconds'] / hvp['images']:.2f} s per image "
                         f"-> {hours:.1f} h")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--images", nargs="+", type=int, default=[2, 4, 8])
    parser.add_argument("--solvers-at", type=int, nargs="+", default=[2],
                        help="image counts at which lambda_1 is solved by both solvers (default: 2; "
                             "their products are what the other steps' HVP rows time)")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--one", nargs=2, metavar=("MODEL", "IMAGES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:  # a child: one configuration, its rows as JSON on stdout
        name, images = args.one[0], int(args.one[1])
        print(json.dumps(measure(name, images, images in args.solvers_at)))
        return
    # one fresh process per configuration, so that each peak is its own (a long process keeps what
    # the allocator freed: 15 GB after five models here); rows accumulate in a JSON file, and a
    # configuration already there is not measured again
    store = args.out.with_suffix(".json")
    rows: list[dict] = json.loads(store.read_text()) if store.exists() else []
    for name in args.models:
        for images in args.images:
            if any(r["model"] == name and r["images"] == images for r in rows):
                continue
            child = subprocess.run([sys.executable, __file__, "--one", name, str(images), "--solvers-at",
                                    *map(str, args.solvers_at)], capture_output=True, text=True)
            if child.returncode != 0:
                sys.exit(f"{name} x {images} failed (exit {child.returncode}): {child.stderr[-2000:]}")
            measured = json.loads(child.stdout.strip().splitlines()[-1])
            rows += measured
            print(f"{name} x {images}: " + ", ".join(f"{r['measure']} {r['seconds']:.1f}s" for r in measured),
                  flush=True)
            write_text(store, json.dumps(rows, indent=1) + "\n")
            write_text(args.out, table(rows, "python " + " ".join(sys.argv)))


if __name__ == "__main__":
    main()
