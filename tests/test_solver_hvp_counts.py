"""The eigen-solver spends no more Hessian-vector products than ``benchmarks/solvers.py`` recorded
(``benchmarks/results/solvers.json``) on the same two models and batch: counts, not seconds, so
the guard holds on a busy machine. A run that needs more products fails here before anyone
times it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from vitprobe.sharpness import HessianOperator, eigenpairs

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def models():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from solvers import TOL, solver_models
    finally:
        sys.path.remove(str(BENCHMARKS))
    return TOL, solver_models()


def test_hvp_counts_do_not_grow_beyond_the_recorded_ones(models) -> None:
    tol, built = models
    recorded = json.loads((BENCHMARKS / "results" / "solvers.json").read_text())
    assert recorded["tol"] == tol
    counts = {}
    for name, (model, data) in built.items():
        operator = HessianOperator(model, data)
        for k in (1, 5):
            pairs = eigenpairs(operator, k=k, tol=tol)
            assert pairs.converged and (pairs.residuals < tol).all()
            counts[f"{name} top-{k}"] = pairs.total_hvps
        operator.release()
    assert set(counts) == set(recorded["hvps"])
    grown = {key: (counts[key], recorded["hvps"][key]) for key in counts if counts[key] > recorded["hvps"][key]}
    assert not grown, f"more products than recorded (now, recorded): {grown}"
