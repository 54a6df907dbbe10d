"""What the eigen-solvers and trace estimators cost outside the Hessian-vector products.

Part 1, on a 4.8M-parameter timm ResNet (BasicBlock [2, 2, 2, 2], channels 42-336) and 64 shapes
images: top-1 Lanczos (vitprobe) and PyHessian's power iteration, both at tol 1e-3, interleaved in
one process. Each side's products are timed where they happen (vitprobe: the operator's
``matvec``; PyHessian: its own ``pyhessian.hessian.hessian_vector_product``), so the time outside
them is each solver's own overhead: orthogonalisation, dot products, casts. Goal (issue 19): under
5 % of vitprobe's top-1 time.

Part 2, on a synthetic float32 operator H = diag(d) with 1M, 5M and 25M parameters (its product is
one multiply, so nearly everything measured is the solver): Hutch++ with 100 products and SLQ with
one vector of 48 steps, each in a fresh process; the peak resident memory above the process's
start (the kernel's high-water mark) and the seconds per product outside the product.

    OMP_NUM_THREADS=1 python benchmarks/solvers.py [--repeats 3] [--out benchmarks/results/solvers.md]
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import torch
from timm.models.resnet import BasicBlock, ResNet

from vitprobe.data import load_data
from vitprobe.models import as_loaded
from vitprobe.report.files import write_text
from vitprobe.sharpness import HessianOperator, eigenpairs
from vitprobe.sharpness.loss import cross_entropy
from vitprobe.sharpness.pyhessian_peer import PyHessianRun

TOL = 1e-3


class Timed:
    """A callable that adds the seconds spent in ``function`` to ``seconds``."""

    def __init__(self, function) -> None:
        self.function, self.seconds, self.calls = function, 0.0, 0

    def __call__(self, *args, **kwargs):
        started = time.perf_counter()
        try:
            return self.function(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - started
            self.calls += 1


class TimedOperator:
    """``operator`` with its products timed (``products.seconds``, ``products.calls``)."""

    def __init__(self, operator: HessianOperator) -> None:
        self.shape, self.dtype, self.device = operator.shape, operator.dtype, operator.device
        self.products = Timed(operator.matvec)

    def __matmul__(self, v):
        return self.products(v)


def vitprobe_top1(model, data) -> dict:
    operator = HessianOperator(model, data)
    timed = TimedOperator(operator)
    started = time.perf_counter()
    pairs = eigenpairs(timed, k=1, tol=TOL)
    total = time.perf_counter() - started
    operator.release()
    return {"tool": "vitprobe (Lanczos)", "seconds": total, "products": timed.products.calls,
            "in_products": timed.products.seconds, "lambda_1": float(pairs.values[0])}


def pyhessian_top1(model, data) -> dict:
    module = importlib.import_module("pyhessian.hessian")
    original = module.hessian_vector_product
    timed = Timed(original)
    module.hessian_vector_product = timed
    try:
        params = [p for p in model.module.parameters() if p.requires_grad]
        run = PyHessianRun(model.module, list(data), cross_entropy, params)
        started = time.perf_counter()
        values, _ = run.eigenvalues(k=1, tol=TOL, max_iter=100)
        total = time.perf_counter() - started
    finally:
        module.hessian_vector_product = original
    return {"tool": "PyHessian (power)", "seconds": total, "products": timed.calls,
            "in_products": timed.seconds, "lambda_1": values[0]}


PEAK = textwrap.dedent('''
    import json, sys, time
    import torch
    from vitprobe.sharpness.density import quadrature
    from vitprobe.sharpness.trace import hutch_plus_plus

    class Diagonal:
        def __init__(self, size):
            self.shape, self.dtype, self.device = (size, size), torch.float32, torch.device("cpu")
            self.d = torch.linspace(-1.0, 100.0, size)
            self.seconds = 0.0
            self.calls = 0
        def __matmul__(self, v):
            started = time.perf_counter()
            out = self.d * v
            self.seconds += time.perf_counter() - started
            self.calls += 1
            return out

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) * 1024

    size, what = int(sys.argv[1]), sys.argv[2]
    op = Diagonal(size)
    generator = torch.Generator().manual_seed(0)
    open("/proc/self/clear_refs", "w").write("5")
    before = status("VmRSS")
    started = time.perf_counter()
    if what == "hutch++":
        hutch_plus_plus(op, 100, generator)
    else:
        quadrature(op, 48, generator, True)
    total = time.perf_counter() - started
    print(json.dumps({"peak": status("VmHWM") - before, "seconds": total, "products": op.calls,
                      "outside": (total - op.seconds) / op.calls}))
''')


def peak(size: int, what: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PEAK, str(size), what], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 5_000_000, 25_000_000])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/solvers.md"))
    args = parser.parse_args()

    torch.manual_seed(0)
    model = as_loaded(ResNet(BasicBlock, [2, 2, 2, 2], channels=(42, 84, 168, 336), num_classes=4).eval(),
                      data_config={"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.5,) * 3,
                                   "interpolation": "bilinear", "crop_pct": 1.0, "crop_mode": "center"})
    data = load_data("shapes:train", model, num_images=64, batch_size=64)
    rows = []
    for repeat in range(args.repeats):
        for measure in (vitprobe_top1, pyhessian_top1):
            row = measure(model, data)
            row["outside"] = row["seconds"] - row["in_products"]
            rows.append(row)
            print(repeat, row, flush=True)
    lines = [f"# Solvers outside the Hessian-vector products ({platform.processor() or platform.machine()}, "
             f"{torch.get_num_threads()} threads, torch {torch.__version__})", "",
             f"## Top-1 at tol {TOL}: ResNet with {model.num_parameters:,} parameters, 64 images", "",
             "| tool | seconds | products | seconds in products | outside products | outside per product (ms) |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for tool in dict.fromkeys(r["tool"] for r in rows):
        mine = [r for r in rows if r["tool"] == tool]
        med = {key: float(np.median([r[key] for r in mine])) for key in ("seconds", "products", "in_products", "outside")}
        lines.append(f"| {tool} | {med['seconds']:.2f} | {med['products']:.0f} | {med['in_products']:.2f} | "
                     f"{med['outside']:.3f} ({100 * med['outside'] / med['seconds']:.1f} %) | "
                     f"{1000 * med['outside'] / med['products']:.1f} |")
    lines += ["", "Medians over repeats. λ1: " + ", ".join(f"{r['tool']} {r['lambda_1']:.4g}" for r in rows[:2]), "",
              "## Peak memory above the process's start, synthetic float32 operator", "",
              "| parameters | estimator | products | peak (MB) | vectors of n floats | outside per product (ms) |",
              "| ---: | --- | ---: | ---: | ---: | ---: |"]
    for size in args.sizes:
        for what in ("hutch++", "slq"):
            result = peak(size, what)
            print(size, what, result, flush=True)
            lines.append(f"| {size:,} | {what} | {result['products']} | {result['peak'] / 1e6:.0f} | "
                         f"{result['peak'] / (4 * size):.1f} | {1000 * result['outside']:.1f} |")
    lines += ["", "Hutch++ with 100 products keeps a 33-column sketch and its Q, both float32 (66 vectors); "
              "the float64 QR before issue 19 added two 33-column float64 copies (132 vectors more). SLQ keeps "
              "its Lanczos basis, allocated 32 vectors at a time (64 for 48 steps)."]
    write_text(args.out, "\n".join(lines) + "\n")
    print(args.out.read_text())


if __name__ == "__main__":
    main()
