"""vitprobe against PyHessian on the same timm ViT and ResNet and the same images.

For each model and each data layout (one batch; many batches), both tools compute the top-1 and
top-5 Hessian eigenvalues at tol 1e-3 and the trace; we record wall time, Hessian-vector products
and the true error against a tight reference: Lanczos on a float64 copy of the model at residual
tolerance 1e-8 for eigenvalues, Hutch++ with a large budget (its standard error reported) for the
trace. PyHessian runs unchanged (``pyhessian.hessian``), wrapped only for eval mode and math-path
attention. Both sides run interleaved in one process. The machine is shared and its load comes in
bursts (wall times of one operation varied 50x within minutes), so the headline measure is the CPU
time of this process with one thread (``OMP_NUM_THREADS=1``): the work done, immune to being
descheduled. Wall times are recorded too. Ratios of medians are reported. A second PyHessian row
at tol 1e-5 shows what PyHessian spends to get its top-1 error below 1e-3.

Goals (issue 3): top-1 at least as fast with true error < 1e-3; top-5 at least 3x faster; many
batches at least 2x faster.

    OMP_NUM_THREADS=1 python benchmarks/sharpness.py [--repeats 3] [--out benchmarks/results/sharpness.md]
"""

from __future__ import annotations

import argparse
import copy
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from vitprobe.data import load_data
from vitprobe.data.batches import Batches
from vitprobe.models import load_model
from vitprobe.report.files import write_csv, write_text
from vitprobe.sharpness import hessian_spectrum, hessian_trace
from vitprobe.sharpness.loss import cross_entropy
from vitprobe.sharpness.pyhessian_peer import PyHessianRun

TOL = 1e-3


def reference_eigenvalues(module: torch.nn.Module, data: Batches, k: int) -> np.ndarray:
    """Lanczos at tol 1e-8 on a float64 copy (model and images)."""
    double = copy.deepcopy(module).double()
    batches = [(x.double(), y) for x, y in data]
    return hessian_spectrum(double, batches, k=k, tol=1e-8, max_iter=400).eigenvalues


def relative_error(values, reference) -> float:
    values, reference = np.asarray(values, dtype=float), np.asarray(reference, dtype=float)
    return float(np.max(np.abs(values - reference) / np.abs(reference)))


class Clock:
    """CPU seconds of this process and wall seconds of a block."""

    def __enter__(self) -> Clock:
        self.cpu, self.wall = time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.cpu, self.wall = time.process_time() - self.cpu, time.perf_counter() - self.wall


def run_pair(module, data: Batches, k: int, repeats: int, reference: np.ndarray,
             peer_tols: tuple[float, ...] = (TOL,)) -> list[dict]:
    rows = []
    tools = [("pyhessian", t) for t in peer_tols] + [("vitprobe", TOL)]
    for repeat in range(repeats):
        for tool, tol in (tools if repeat % 2 == 0 else tools[::-1]):
            with Clock() as clock:
                if tool == "pyhessian":
                    peer = PyHessianRun(module, list(data), cross_entropy, list(module.parameters()),
                                        seed=repeat)
                    values, _ = peer.eigenvalues(k, tol, 100)
                    values, hvps = sorted(values, reverse=True), peer.hvps
                else:
                    result = hessian_spectrum(module, data, k=k, tol=tol, seed=repeat)
                    values, hvps = result.eigenvalues, result.total_hvps
            name = tool if tol == TOL else f"{tool} tol {tol:g}"
            rows.append({"tool": name, "quantity": f"top-{k}", "repeat": repeat, "cpu": clock.cpu,
                         "seconds": clock.wall, "hvps": hvps, "error": relative_error(values, reference),
                         "values": " ".join(f"{v:.6g}" for v in values)})
    return rows


def run_trace(module, data: Batches, repeats: int, reference: float) -> list[dict]:
    rows = []
    for repeat in range(repeats):
        with Clock() as clock:
            peer = PyHessianRun(module, list(data), cross_entropy, list(module.parameters()), seed=repeat)
            samples = peer.trace(100, TOL)
        rows.append({"tool": "pyhessian", "quantity": "trace", "repeat": repeat, "cpu": clock.cpu,
                     "seconds": clock.wall, "hvps": peer.hvps,
                     "error": abs(np.mean(samples) - reference) / abs(reference),
                     "values": f"{np.mean(samples):.6g}"})
        budget = max(3, peer.hvps)  # the same number of products
        with Clock() as clock:
            ours = hessian_trace(module, data, num_probes=budget, seed=repeat)
        rows.append({"tool": "vitprobe", "quantity": "trace", "repeat": repeat, "cpu": clock.cpu,
                     "seconds": clock.wall, "hvps": ours.hvps,
                     "error": abs(ours.trace - reference) / abs(reference),
                     "values": f"{ours.trace:.6g} +- {ours.std_error:.3g}"})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["demo:vit", "demo:resnet"])
    parser.add_argument("--num-images", type=int, default=128)
    parser.add_argument("--many-batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--trace-reference-samples", type=int, default=300)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/sharpness.md"))
    parser.add_argument("--from-csv", action="store_true", help="only rewrite the report from the CSV")
    args = parser.parse_args()
    if args.from_csv:
        frame = pd.read_csv(args.out.with_suffix(".csv"))
        notes = [line for line in args.out.read_text().splitlines() if line.startswith("- ") and "reference top-5" in line]
        write_text(args.out, report(frame, args) + "\n" + "\n".join(notes) + "\n")
        return
    rows = []
    references = {}
    for spec in args.models:
        loaded = load_model(spec)
        module = loaded.module
        images = load_data("shapes", loaded, num_images=args.num_images, batch_size=args.num_images, seed=0)
        layouts = {"one batch": images, f"{args.num_images // args.many_batch_size} batches":
                   images.rebatch(args.many_batch_size)}
        reference = reference_eigenvalues(module, images, 5)
        trace_reference = hessian_trace(module, images, num_probes=args.trace_reference_samples, seed=123)
        print(f"{spec}: reference top-5 {reference}, trace {trace_reference.trace:.6g} "
              f"+- {trace_reference.std_error:.3g}", flush=True)
        references[spec] = (reference, trace_reference)
        for layout, data in layouts.items():
            found = (run_pair(module, data, 1, args.repeats, reference[:1], peer_tols=(TOL, 1e-5))
                     + run_pair(module, data, 5, max(1, args.repeats - 1), reference)
                     + run_trace(module, data, 1, trace_reference.trace))
            for row in found:
                row.update(model=spec, layout=layout, params=sum(p.numel() for p in module.parameters()),
                           images=args.num_images)
                print(row, flush=True)
            rows += found
            frame = pd.DataFrame(rows)  # written after every layout: an interrupted run keeps its rows
            write_csv(frame, args.out.with_suffix(".csv"))
            write_text(args.out, report(frame, args) + "\n" + "\n".join(
                f"- {spec}: reference top-5 {', '.join(f'{v:.6g}' for v in ref)}; trace {tr.trace:.5g} "
                f"+- {tr.std_error:.2g} (Hutch++, {tr.hvps} products)" for spec, (ref, tr) in references.items()) + "\n")


def report(frame: pd.DataFrame, args) -> str:
    summary = frame.groupby(["model", "layout", "quantity", "tool"]).agg(
        cpu=("cpu", "median"), seconds=("seconds", "median"), hvps=("hvps", "median"),
        error=("error", "max"), runs=("cpu", "size")).reset_index()
    lines = ["# Sharpness: vitprobe vs PyHessian", "",
             f"Machine: {platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
             "2 cores shared with other jobs. Time = median CPU seconds of the process (the work done; "
             "wall seconds, also listed, swung up to 50x with the machine's load). Both tools run "
             "interleaved in one process on the same model, images and batches.",
             f"Images: {args.num_images} `shapes` images, as one batch and as batches of {args.many_batch_size}. "
             f"Tolerance {TOL} for both tools (vitprobe: residual ||Hv - lambda v|| / |lambda|; PyHessian: "
             "relative change of lambda between iterations).",
             "Error: the largest |value - reference| / |reference| over the returned eigenvalues, sorted; "
             "reference = Lanczos on a float64 copy of the model at residual 1e-8. Trace: reference = Hutch++ "
             f"with {args.trace_reference_samples} products, whose own standard error is listed below; both "
             "tools get the number of products PyHessian's stopping rule chose.", "",
             "| model | data | quantity | tool | CPU s | vs vitprobe | wall s | HVPs | error | runs |",
             "|" + " --- |" * 10]
    for (model, layout, quantity), group in summary.groupby(["model", "layout", "quantity"], sort=False):
        ours = group[group["tool"] == "vitprobe"]["cpu"].iloc[0]
        for _, row in group.iterrows():
            ratio = "1" if row["tool"] == "vitprobe" else f"{row['cpu'] / ours:.1f}x slower"
            lines.append(f"| {model} | {layout} | {quantity} | {row['tool']} | {row['cpu']:.2f} | {ratio} | "
                         f"{row['seconds']:.2f} | {row['hvps']:.0f} | {row['error']:.1e} | {row['runs']} |")
    return "\n".join(lines + [""] + goals(summary)) + "\n"


def goals(summary: pd.DataFrame) -> list[str]:
    """The issue's goals, checked against the medians above."""
    def ratio(model, layout, quantity) -> tuple[float, float, float]:
        rows = summary[(summary["model"] == model) & (summary["layout"] == layout) & (summary["quantity"] == quantity)]
        peer, ours = rows[rows["tool"] == "pyhessian"].iloc[0], rows[rows["tool"] == "vitprobe"].iloc[0]
        return peer["cpu"] / ours["cpu"], ours["error"], peer["error"]

    lines = ["## Goals", ""]
    for model in dict.fromkeys(summary["model"]):
        one, many = sorted(set(summary[summary["model"] == model]["layout"]), key=lambda l: l != "one batch")
        r1, e1, p1 = ratio(model, one, "top-1")
        r5, _, _ = ratio(model, one, "top-5")
        m1, m5, mt = (ratio(model, many, q)[0] for q in ("top-1", "top-5", "trace"))
        lines += [f"- {model}: top-1 {r1:.1f}x faster with true error {e1:.1e} (PyHessian {p1:.1e}): "
                  f"{'met' if r1 >= 1 and e1 < 1e-3 else 'MISSED'}; top-5 {r5:.1f}x faster: "
                  f"{'met' if r5 >= 3 else 'MISSED'}; {many}: top-1 {m1:.1f}x, top-5 {m5:.1f}x, trace at equal "
                  f"products {mt:.1f}x: {'met' if min(m1, m5, mt) >= 2 else 'met for eigenvalues, MISSED for the trace' if min(m1, m5) >= 2 else 'MISSED'}."]
    return lines + ["", NOTES]


NOTES = """## Notes

- Why vitprobe is faster: Lanczos gets all k eigenvalues from one Krylov space (PyHessian runs one
  power iteration per eigenvalue, each from a fresh random vector), and on many batches the gradient
  graphs are kept, so a product is one double backward instead of a forward, a backward and a double
  backward per batch. Per product, both tools run the same double backward on one batch.
- PyHessian's top-5 on the ViT returns a negative eigenvalue (about -31) as its fifth: power iteration
  with deflation finds the largest *magnitude*, hence the error of 2.0. Its top-1 errors of 1-2e-3 at
  tol 1e-3 come from its stopping rule (relative change of lambda); at tol 1e-5 it reaches 2e-5 but
  spends 1.4-1.8x more products than at 1e-3. vitprobe's residual rule at 1e-3 gives errors near 1e-6
  because the eigenvalue error of a Ritz value is about residual^2 / gap.
- Trace: both tools are given the same number of products (PyHessian's stopping rule chooses it), so
  the speed-up is per product only. The many-batch goal (2x) is missed for the trace (1.5-1.7x, one
  run each). Per product, the kept graphs saved 1.9x in the ViT's top-1 runs of the same layout but
  only 1.3x in the ResNet's (its 6 products barely amortise building the graphs), so for the trace,
  whose products are all of the same kind, 1.5-1.7x is what kept graphs give here; the single trace
  run also carries the machine's noise. The trace errors (2-9%) are of the order of the
  reference's own standard error (Hutch++ with 90 products): no claim of accuracy is made here; Hutch++
  gains most when a few eigenvalues dominate the trace, which is not the case for these models, whose
  bulk carries most of it.
"""


if __name__ == "__main__":
    main()
