"""How the products of top-k depend on each tool's random start (issue 28's ratio, explained).

vitprobe's Lanczos and PyHessian's power iteration both start from a random vector; the count of
Hessian-vector products each needs, and so the ratio of their times, moves with it. On
``benchmarks/solvers.py``'s two models and batch, each tool runs top-1 and top-5 at tol 1e-3 from
seeds 0-4 (PyHessian: ``torch.manual_seed`` before its run, as ``PyHessianRun`` does; vitprobe:
``eigenpairs(seed=...)``); products and true error against the float64 reference, no timing (a
product costs the same in both tools: ``solvers.md``).

    OMP_NUM_THREADS=1 python benchmarks/solver_seeds.py [--seeds 5] [--out benchmarks/results/solver_seeds.md]
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

import numpy as np
import torch
from solvers import TOL, pyhessian_top, reference, solver_models, true_error, vitprobe_top

from vitprobe.report.files import write_text


def counts(model, data, truth: np.ndarray, k: int, seed: int) -> dict[str, tuple[int, float]]:
    """(products, true error) of each tool's top-k from ``seed``."""
    runs = {"vitprobe": vitprobe_top(model, data, k, seed=seed), "PyHessian": pyhessian_top(model, data, k, seed=seed)}
    return {tool: (run["hvps"], true_error(run["values"], truth[:k])) for tool, run in runs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/solver_seeds.md"))
    args = parser.parse_args()
    lines = [f"# Products against the random start ({platform.machine()}, torch {torch.__version__})", "",
             f"Top-k at tol {TOL}, 64 images, seeds 0-{args.seeds - 1}: products (true error).", "",
             "| model | k | tool | " + " | ".join(f"seed {s}" for s in range(args.seeds))
             + " | products, vitprobe / PyHessian |", "| --- | ---: | --- |" + " ---: |" * (args.seeds + 1)]
    for name, (model, data) in solver_models().items():
        truth = reference(model, data)
        for k in (1, 5):
            runs = [counts(model, data, truth, k, seed) for seed in range(args.seeds)]
            print(name, k, runs, flush=True)
            ratios = [run["vitprobe"][0] / run["PyHessian"][0] for run in runs]
            for tool in ("vitprobe", "PyHessian"):
                cells = [f"{run[tool][0]} ({run[tool][1]:.0e})" for run in runs]
                ratio = f"{min(ratios):.2f}-{max(ratios):.2f}" if tool == "vitprobe" else ""
                lines.append(f"| {name} | {k} | {tool} | " + " | ".join(cells) + f" | {ratio} |")
    write_text(args.out, "\n".join(lines) + "\n")
    print(args.out.read_text())


if __name__ == "__main__":
    main()
