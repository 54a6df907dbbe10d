"""The Hutch++ interval covers tr(H) at its nominal rate: measured over seeds on a model whose
Hessian is known exactly (squared error of a linear model: H = 2 X^T X / N)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from vitprobe.sharpness import HessianOperator
from vitprobe.sharpness.trace import trace_of


def squared_error(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return ((outputs.squeeze(-1) - targets) ** 2).mean()


def test_hutch_plus_plus_interval_coverage_is_nominal():
    generator = torch.Generator().manual_seed(0)
    n, dim = 80, 40
    basis, _ = torch.linalg.qr(torch.randn(n, dim, generator=generator, dtype=torch.float64))
    rotation, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=torch.float64))
    singular = torch.sqrt(10.0 * 0.8 ** torch.arange(dim, dtype=torch.float64) + 0.2)
    x = basis * singular @ rotation.T * np.sqrt(n)  # X^T X / N has eigenvalues singular**2
    y = torch.randn(n, generator=generator, dtype=torch.float64)
    model = nn.Linear(dim, 1, bias=False).double()
    hessian = 2 * x.T @ x / n
    truth = float(torch.trace(hessian))
    operator = HessianOperator(model, (x, y), loss_fn=squared_error)
    covered, covered_one_se, errors = 0, 0, []
    seeds = 400
    for seed in range(seeds):
        result = trace_of(operator, num_probes=30, seed=seed)
        low, high = result.interval
        covered += low <= truth <= high
        covered_one_se += abs(result.trace - truth) <= result.std_error
        errors.append(result.trace - truth)
    assert abs(np.mean(errors)) < 3 * np.std(errors) / np.sqrt(seeds)  # unbiased
    assert 0.91 <= covered / seeds <= 0.985  # 95 % nominal; binomial sd 0.011
    assert covered_one_se / seeds < 0.8  # the control: a too-narrow interval is caught
    frame = result.to_frame()
    assert frame[["ci_low", "ci_high"]].iloc[0].tolist() == list(result.interval)
