"""Eigen-solvers side by side, and what they cost outside the Hessian-vector products.

Part 1 (issue 28), top-1 and top-5 at tol 1e-3 on two models, every solver on the same batch in
one process: vitprobe's Lanczos, PyHessian's power iteration with deflation, and curvlinops'
``HessianLinearOperator`` under scipy's ``eigsh`` (ARPACK, as curvlinops' documentation computes
eigenvalues). Models: a timm ViT of 157,700 parameters (32 px, patch 4, width 64, depth 3)
trained for 10 AdamW steps on shapes, and a random 4.8M-parameter timm ResNet (BasicBlock
[2, 2, 2, 2], channels 42-336); 64 shapes images. The true error is against ARPACK at tol 1e-10
on the float64 copy of each model. Products are timed where they happen (vitprobe's operator
``@``, PyHessian's ``hessian_vector_product``), so the time outside them is each tool's own; for
vitprobe it is split into the operator's set-up (memory probe, kept graph) and Lanczos's work.
``solvers.json`` keeps the HVP counts, which ``tests/test_solver_hvp_counts.py`` holds the solver to.

Accuracy against products: every tool again at tol 1e-2 ... 1e-5 (products and true error, no
timing), and the fewest products after which each reached a true error e, beside Lanczos
"stopped by the truth" (its Ritz values followed product by product against the reference): the
best any stopping rule could do from vitprobe's start. ``solver_seeds.py`` repeats tol 1e-3 over
random starts.

Part 2, on a synthetic float32 operator H = diag(d) with 1M, 5M and 25M parameters (its product is
one multiply, so nearly everything measured is the solver): Hutch++ with 100 products and SLQ with
one vector of 48 steps, each in a fresh process; the peak resident memory above the process's
start (the kernel's high-water mark) and the seconds per product outside the product.

    OMP_NUM_THREADS=1 python benchmarks/solvers.py [--repeats 2] [--out benchmarks/results/solvers.md]
"""

from __future__ import annotations

import argparse
import copy
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
from scipy.sparse.linalg import LinearOperator, eigsh
from timm.models.resnet import BasicBlock, ResNet
from timm.models.vision_transformer import VisionTransformer

from vitprobe.data import load_data
from vitprobe.models import as_loaded
from vitprobe.models.attention_path import math_attention
from vitprobe.models.loaded import LoadedModel
from vitprobe.report.files import write_text
from vitprobe.sharpness import HessianOperator, eigenpairs
from vitprobe.sharpness.lanczos import Lanczos, products
from vitprobe.sharpness.loss import cross_entropy
from vitprobe.sharpness.pyhessian_peer import PyHessianRun

TOL = 1e-3
CONFIG = {"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.5,) * 3, "interpolation": "bilinear",
          "crop_pct": 1.0, "crop_mode": "center"}


def solver_models() -> dict[str, tuple[LoadedModel, list[tuple[torch.Tensor, torch.Tensor]]]]:
    """The two benchmark models with their batch of 64 shapes images, built deterministically."""
    torch.manual_seed(0)
    vit = as_loaded(VisionTransformer(img_size=32, patch_size=4, embed_dim=64, depth=3, num_heads=2,
                                      num_classes=4), data_config=CONFIG)
    optimizer = torch.optim.AdamW(vit.module.parameters(), lr=1e-3)
    vit.module.train()
    for images, labels in load_data("shapes:train", vit, num_images=640, batch_size=64):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(vit.module(images), labels).backward()
        optimizer.step()
    vit.module.eval()
    torch.manual_seed(0)
    resnet = as_loaded(ResNet(BasicBlock, [2, 2, 2, 2], channels=(42, 84, 168, 336), num_classes=4).eval(),
                       data_config=CONFIG)
    return {name: (model, list(load_data("shapes:train", model, num_images=64, batch_size=64, seed=1)))
            for name, model in (("ViT", vit), ("ResNet", resnet))}


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

    def __init__(self, operator) -> None:
        self.shape, self.dtype, self.device = operator.shape, operator.dtype, operator.device
        self.products = Timed(operator.__matmul__)

    def __matmul__(self, v):
        return self.products(v)


def scipy_operator(operator) -> tuple[LinearOperator, Timed]:
    """A float64 scipy view of a torch operator, its products counted."""
    product = Timed(lambda v: (operator @ torch.as_tensor(np.ascontiguousarray(v).ravel(), dtype=operator.dtype))
                    .double().numpy())
    return LinearOperator(operator.shape, matvec=product, dtype=np.float64), product


def vitprobe_top(model, data, k: int, tol: float = TOL, seed: int = 0) -> dict:
    started = time.perf_counter()
    operator = HessianOperator(model, data)
    built = time.perf_counter() - started
    timed = TimedOperator(operator)
    pairs = eigenpairs(timed, k=k, tol=tol, seed=seed)
    total = time.perf_counter() - started
    operator.release()
    return {"tool": "vitprobe (Lanczos)", "seconds": total, "hvps": timed.products.calls, "build": built,
            "in_products": timed.products.seconds, "values": pairs.values.tolist()}


def pyhessian_top(model, data, k: int, tol: float = TOL, seed: int = 0) -> dict:
    ph = importlib.import_module("pyhessian.hessian")  # the module: the package rebinds the name
    products = Timed(ph.hessian_vector_product)  # PyHessianRun counts the calls of what it finds here
    ph.hessian_vector_product = products
    try:
        started = time.perf_counter()
        params = [p for p in model.module.parameters() if p.requires_grad]
        run = PyHessianRun(model.module, data, cross_entropy, params, seed=seed)
        values, _ = run.eigenvalues(k=k, tol=tol, max_iter=100)
        total = time.perf_counter() - started
    finally:
        ph.hessian_vector_product = products.function
    return {"tool": "PyHessian (power)", "seconds": total, "hvps": run.hvps, "in_products": products.seconds,
            "values": sorted(values, reverse=True)}


def curvlinops_top(model, data, k: int, tol: float = TOL) -> dict:
    import curvlinops

    started = time.perf_counter()
    params = [p for p in model.module.parameters() if p.requires_grad]
    with math_attention(model.module):  # forward-mode AD has no fused-attention kernel on CPU
        operator = curvlinops.HessianLinearOperator(model.module, torch.nn.CrossEntropyLoss(), params, data)
        scipy_view, products = scipy_operator(operator)
        values = eigsh(scipy_view, k=k, which="LA", tol=tol, return_eigenvectors=False)
    return {"tool": "curvlinops + eigsh", "seconds": time.perf_counter() - started, "hvps": products.calls,
            "values": sorted(values.tolist(), reverse=True)}


def lanczos_oracle(model, data, truth: np.ndarray, targets: tuple[float, ...], steps: int = 80) -> dict[float, int | None]:
    """The products after which Lanczos's top-k Ritz values first lie within each target relative
    error of the truth (and stay there): where a stopping rule that knew the answer would stop."""
    operator = HessianOperator(model, data)
    start = torch.randn(operator.size, generator=torch.Generator().manual_seed(0), dtype=operator.dtype)
    run = Lanczos(products(operator), start, precision=operator.dtype)
    errors = []
    for _ in range(steps):
        run.step()
        theta = np.sort(run.ritz()[0])[::-1][:len(truth)]
        errors.append(np.inf if len(theta) < len(truth) else float(np.max(np.abs(theta - truth) / np.abs(truth))))
    operator.release()
    first: dict[float, int | None] = {}
    for target in targets:
        last_above = max((i for i, error in enumerate(errors) if error > target), default=-1)
        first[target] = last_above + 2 if last_above + 1 < steps else None  # None: not within the steps
    return first


def reference(model, data, k: int = 5) -> np.ndarray:
    """The top k eigenvalues of the float64 model's Hessian, by ARPACK at tol 1e-10."""
    double = copy.deepcopy(model.module).double()
    operator = HessianOperator(as_loaded(double, data_config=CONFIG), [(x.double(), y) for x, y in data])
    values = eigsh(scipy_operator(operator)[0], k=k, which="LA", tol=1e-10, return_eigenvectors=False)
    return np.sort(values)[::-1]


def true_error(values, truth: np.ndarray) -> float:
    """The largest relative error of the k values (largest first) against the truth."""
    return float(np.max(np.abs(np.asarray(values) - truth) / np.abs(truth)))


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


TOOLS = (vitprobe_top, pyhessian_top, curvlinops_top)
SWEEP = (1e-2, 1e-3, 1e-4, 1e-5)


def timed_rows(models: dict, truths: dict, repeats: int) -> list[dict]:
    """Every tool at tol 1e-3, ``repeats`` times, with its seconds."""
    rows = []
    for name, (model, data) in models.items():
        for k in (1, 5):
            for repeat in range(repeats):
                for measure in TOOLS:
                    row = {"model": name, "k": k, "tol": TOL, **measure(model, data, k)}
                    row["error"] = true_error(row["values"], truths[name][:k])
                    rows.append(row)
                    print(repeat, {key: value for key, value in row.items() if key != "values"}, flush=True)
    return rows


def timed_table(rows: list[dict], models: dict) -> list[str]:
    lines = [f"## Top-1 and top-5 at tol {TOL}, 64 images, one process", "",
             "| model | k | tool | HVPs | seconds | vs PyHessian | outside products (set-up + solver) | true error |",
             "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
    for (name, k) in dict.fromkeys((r["model"], r["k"]) for r in rows):
        mine = [r for r in rows if r["model"] == name and r["k"] == k]
        def median(key: str, tool: str) -> float:
            return float(np.median([r[key] for r in mine if r["tool"] == tool]))

        for tool in dict.fromkeys(r["tool"] for r in mine):
            row = next(r for r in mine if r["tool"] == tool)
            seconds = median("seconds", tool)
            outside = ""
            if "in_products" in row:
                share = 100 * (seconds - median("in_products", tool)) / seconds
                outside = f"{share:.1f} %"
                if "build" in row:
                    build = 100 * median("build", tool) / seconds
                    outside += f" ({build:.1f} + {share - build:.1f})"
            lines.append(f"| {name} ({models[name][0].num_parameters:,}) | {k} | {tool} | {row['hvps']} | "
                         f"{seconds:.2f} | {seconds / median('seconds', 'PyHessian (power)'):.2f}x | {outside} | "
                         f"{row['error']:.1e} |")
    return lines + ["", "Seconds are medians over repeats and include each tool's own set-up (vitprobe: the memory "
                    "probe and building the operator's kept graph; PyHessian: its first gradient). Outside products: "
                    "the time not spent in the tool's Hessian-vector products (PyHessian's `hessian_vector_product`, "
                    "vitprobe's operator `@`); for vitprobe split into the operator's set-up and Lanczos's own work. "
                    "True error: the largest relative error of the k values against the float64 reference; "
                    "PyHessian's deflated power iteration returns the largest-magnitude eigenvalues, so a negative "
                    "one can stand among its top 5."]


def accuracy_rows(models: dict, truths: dict) -> list[dict]:
    """Every tool at each tolerance of ``SWEEP``: products and true error (no timing)."""
    rows = []
    for name, (model, data) in models.items():
        for k in (1, 5):
            for tol in SWEEP:
                for measure in TOOLS:
                    row = {"model": name, "k": k, "tol": tol, **measure(model, data, k, tol)}
                    row["error"] = true_error(row["values"], truths[name][:k])
                    rows.append(row)
                    print({key: value for key, value in row.items() if key != "values"}, flush=True)
            oracle = lanczos_oracle(model, data, truths[name][:k], SWEEP)
            rows += [{"model": name, "k": k, "tol": target, "tool": "Lanczos, stopped by the truth",
                      "hvps": hvps, "error": target} for target, hvps in oracle.items() if hvps is not None]
            print(name, k, "oracle", oracle, flush=True)
    return rows


def accuracy_tables(rows: list[dict]) -> list[str]:
    tools = list(dict.fromkeys(r["tool"] for r in rows))
    asked = [t for t in tools if not t.startswith("Lanczos")]
    lines = ["## Products and true error at each tolerance", "",
             "| model | k | tool | " + " | ".join(f"tol {tol:.0e}" for tol in SWEEP) + " |",
             "| --- | ---: | --- |" + " ---: |" * len(SWEEP)]
    cases = list(dict.fromkeys((r["model"], r["k"]) for r in rows))
    for name, k in cases:
        for tool in asked:
            cells = [next((f"{r['hvps']} ({r['error']:.0e})" for r in rows if (r["model"], r["k"], r["tool"], r["tol"])
                           == (name, k, tool, tol)), "") for tol in SWEEP]
            lines.append(f"| {name} | {k} | {tool} | " + " | ".join(cells) + " |")
    lines += ["", "Each cell: products (true error). The tools read tol differently: vitprobe stops when every "
              "wanted Ritz pair's residual is below tol times its value (an eigenvalue then lies that close), "
              "ARPACK likewise, PyHessian when the relative change of its estimate is below tol.", "",
              "## Fewest products to a true error of at most e", "",
              "| model | k | e | " + " | ".join(tools) + " |", "| --- | ---: | ---: |" + " ---: |" * len(tools)]
    for name, k in cases:
        for target in SWEEP:
            cells = [str(min((r["hvps"] for r in rows if (r["model"], r["k"], r["tool"]) == (name, k, tool)
                              and r["error"] <= target), default="never"))
                     for tool in tools]
            lines.append(f"| {name} | {k} | {target:.0e} | " + " | ".join(cells) + " |")
    return lines + ["", "The least products among a tool's runs (every tolerance above, and the timed runs) whose "
                    "true error was at most e; never: no run of it got there. \"Lanczos, stopped by the truth\": "
                    "the product after which vitprobe's Lanczos (same start) keeps its top-k Ritz values within e of "
                    "the reference: what any stopping rule on this Krylov space could at best achieve."]


def memory_table(sizes: list[int]) -> list[str]:
    lines = ["## Peak memory above the process's start, synthetic float32 operator", "",
             "| parameters | estimator | products | peak (MB) | vectors of n floats | outside per product (ms) |",
             "| ---: | --- | ---: | ---: | ---: | ---: |"]
    for size in sizes:
        for what in ("hutch++", "slq"):
            result = peak(size, what)
            print(size, what, result, flush=True)
            lines.append(f"| {size:,} | {what} | {result['products']} | {result['peak'] / 1e6:.0f} | "
                         f"{result['peak'] / (4 * size):.1f} | {1000 * result['outside']:.1f} |")
    return lines + ["", "Hutch++ with 100 products keeps a 33-column sketch and its Q, both float32 (66 vectors); "
                    "the float64 QR before issue 19 added two 33-column float64 copies (132 vectors more). SLQ keeps "
                    "its Lanczos basis, allocated 32 vectors at a time (64 for 48 steps)."]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 5_000_000, 25_000_000])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/solvers.md"))
    args = parser.parse_args()

    models = solver_models()
    truths = {name: reference(model, data) for name, (model, data) in models.items()}
    timed = timed_rows(models, truths, args.repeats)
    counts = {f"{r['model']} top-{r['k']}": r["hvps"] for r in timed if r["tool"].startswith("vitprobe")}
    write_text(args.out.with_suffix(".json"), json.dumps({"hvps": counts, "tol": TOL}, indent=1) + "\n")
    lines = [f"# Eigen-solvers side by side ({platform.processor() or platform.machine()}, "
             f"{torch.get_num_threads()} threads, torch {torch.__version__})", ""]
    lines += timed_table(timed, models) + [""]
    lines += accuracy_tables(timed + accuracy_rows(models, truths)) + [""]
    lines += memory_table(args.sizes)
    write_text(args.out, "\n".join(lines) + "\n")
    print(args.out.read_text())


if __name__ == "__main__":
    main()
