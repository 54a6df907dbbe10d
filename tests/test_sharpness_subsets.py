"""``--subsets``: the sampling spread of lambda_1 over disjoint image subsets, against cases whose
sampling distribution is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from vitprobe.cli import main
from vitprobe.errors import UserError
from vitprobe.sharpness import sharpness_subsets


def squared_error(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return ((outputs.squeeze(-1) - targets) ** 2).mean()


def test_equal_per_image_hessians_give_zero_spread():
    """x_i = +-v: every image's Hessian is 2 v v^T, so every subset has lambda_1 = 2 ||v||^2."""
    generator = torch.Generator().manual_seed(0)
    v = torch.randn(6, generator=generator, dtype=torch.float64)
    signs = torch.randint(0, 2, (32,), generator=generator).double() * 2 - 1
    x, y = signs[:, None] * v, torch.randn(32, generator=generator, dtype=torch.float64)
    model = nn.Linear(6, 1, bias=False).double()
    result = sharpness_subsets(model, [(x[i:i + 8], y[i:i + 8]) for i in range(0, 32, 8)], subsets=4,
                               tol=1e-10, loss_fn=squared_error)
    expected = 2 * float(v @ v)
    np.testing.assert_allclose(result.eigenvalues[:, 0], expected, rtol=1e-9)
    frame = result.to_frame().set_index("metric")
    assert frame.loc["eigenvalue_std", "value"] == pytest.approx(0.0, abs=1e-9 * expected)


def test_known_per_image_curvatures_give_the_exact_mean_and_spread():
    """One weight, loss_i = (w x_i - y_i)^2: image i contributes curvature 2 x_i^2, so a subset's
    lambda_1 is the mean of 2 x_i^2 over it, and its first n images' lambda_1 likewise."""
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(40, 1, generator=generator, dtype=torch.float64)
    y = torch.randn(40, generator=generator, dtype=torch.float64)
    model = nn.Linear(1, 1, bias=False).double()
    result = sharpness_subsets(model, (x, y), subsets=5, tol=1e-10, loss_fn=squared_error, sizes=[2, 4, 8])
    curvature = (2 * x[:, 0] ** 2).numpy().reshape(5, 8)
    per_subset = curvature.mean(1)
    np.testing.assert_allclose(result.eigenvalues[:, 0], per_subset, rtol=1e-9)
    frame = result.to_frame()
    rows = frame.set_index("metric")
    assert rows.loc["eigenvalue_mean", "value"] == pytest.approx(per_subset.mean(), rel=1e-9)
    assert rows.loc["eigenvalue_std", "value"] == pytest.approx(per_subset.std(ddof=1), rel=1e-9)
    low, high = stats.t.interval(0.95, 4, loc=per_subset.mean(), scale=stats.sem(per_subset))
    assert (rows.loc["eigenvalue_mean", "ci_low"], rows.loc["eigenvalue_mean", "ci_high"]) == pytest.approx((low, high))
    curve = frame[frame.metric == "lambda_1_by_images"].set_index("subset_images")["value"]
    for n in (2, 4, 8):
        assert curve[n] == pytest.approx(curvature[:, :n].mean(1).mean(), rel=1e-9)
    assert result.eigenvalues.shape == (5, 1) and result.subset_size == 8
    with pytest.raises(UserError, match="at least 2 subsets"):
        sharpness_subsets(model, (x, y), subsets=1, loss_fn=squared_error)


def test_command_writes_the_spread_and_the_figure(tmp_path, monkeypatch):
    module = tmp_path / "subset_models.py"
    module.write_text("from timm.models.resnet import BasicBlock, ResNet\n\n"
                      "def resnet():\n    return ResNet(BasicBlock, [1, 1, 1, 1], channels=(4, 4, 4, 4), "
                      "stem_width=4, num_classes=4)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "out"
    assert main(["sharpness", "--model", "py:subset_models:resnet", "--subsets", "3", "--num-images", "8",
                 "--batch-size", "4", "--input-size", "16", "--trace", "--trace-samples", "6",
                 "--out", str(out), "--quiet"]) == 0
    import pandas as pd

    table = pd.read_csv(out / "sharpness.csv")
    assert set(table.metric) >= {"eigenvalue", "eigenvalue_mean", "eigenvalue_std", "trace_mean",
                                 "lambda_1_by_images"}
    per_subset = table[(table.metric == "eigenvalue") & table.subset.notna()]
    assert per_subset["subset"].tolist() == [0, 1, 2]
    assert (table[table.subset_images.notna()].data == "shapes:train").all()
    assert (out / "figures" / "lambda1-vs-images.png").stat().st_size > 0
    # the single-set measurements still run beside the spread, and the comparison shows the interval
    assert len(table[(table.metric == "eigenvalue") & table.subset.isna()]) == 1
    assert {"trace", "sam_sharpness"} <= set(table.metric)
    assert (out / "figures" / "eigenvalues.png").stat().st_size > 0
