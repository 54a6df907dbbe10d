"""The solvers take any symmetric operator: here curvlinops' GGN (and Fisher) of a small network,
checked against the operator's own dense matrix."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import wasserstein_distance
from torch import nn

from vitprobe.sharpness import eigenpairs, spectral_density, trace_estimate

curvlinops = pytest.importorskip("curvlinops")


@pytest.fixture(scope="module")
def ggn():
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 4)).double()
    x = torch.randn(64, 6, generator=generator, dtype=torch.float64)
    y = torch.randint(0, 4, (64,), generator=generator)
    params = [p for p in model.parameters()]
    data = [(x[:32], y[:32]), (x[32:], y[32:])]
    operator = curvlinops.GGNLinearOperator(model, nn.CrossEntropyLoss(), params, data)
    dense = (operator @ torch.eye(operator.shape[1], dtype=torch.float64)).numpy()
    return operator, (dense + dense.T) / 2


def test_lanczos_and_power_find_the_ggn_top_eigenvalues(ggn):
    operator, dense = ggn
    truth = np.sort(np.linalg.eigvalsh(dense))[::-1]
    lanczos = eigenpairs(operator, k=3, tol=1e-8, max_iter=operator.shape[0])
    np.testing.assert_allclose(lanczos.values, truth[:3], rtol=1e-6)
    for value, vector in zip(lanczos.values, lanczos.vectors.numpy()):
        np.testing.assert_allclose(dense @ vector, value * vector, atol=1e-6 * truth[0])
    power = eigenpairs(operator, k=1, tol=1e-6, method="power", max_iter=2000)
    assert power.values[0] == pytest.approx(truth[0], rel=1e-5)
    # the control: the dense matrix's second eigenvalue is not mistaken for the first
    assert abs(truth[1] - truth[0]) > 1e-3 * truth[0]


def test_trace_estimates_cover_the_ggn_trace(ggn):
    operator, dense = ggn
    truth = float(np.trace(dense))
    for method in ("hutch++", "hutchinson"):
        estimate = trace_estimate(operator, method=method, num_probes=90, seed=1)
        assert estimate.hvps == 90
        assert abs(estimate.trace - truth) < 4 * estimate.std_error
    plus = trace_estimate(operator, method="hutch++", num_probes=90, seed=1)
    plain = trace_estimate(operator, method="hutchinson", num_probes=90, seed=1)
    assert plus.std_error < plain.std_error  # the GGN's spectrum decays fast


def test_slq_on_the_ggn_matches_its_spectral_measure(ggn):
    operator, dense = ggn
    eigenvalues = np.linalg.eigvalsh(dense)
    size = operator.shape[0]
    density = spectral_density(operator, num_probes=8, max_iter=size, seed=0)
    nodes, weights = density.nodes[~np.isnan(density.nodes)], density.weights[~np.isnan(density.nodes)]
    assert weights.sum() == pytest.approx(1.0)
    # each probe's quadrature integrates polynomials exactly: its first moment is v^T A v / v^T v,
    # an unbiased estimate of tr(A) / n
    moments = np.nansum(density.nodes * density.weights, axis=1) * len(density.nodes)
    error = moments.std(ddof=1) / np.sqrt(len(moments))
    assert abs(moments.mean() - eigenvalues.mean()) < 3 * error
    spectrum_range = eigenvalues.max() - eigenvalues.min()
    close = wasserstein_distance(nodes, eigenvalues, u_weights=weights)
    shifted = wasserstein_distance(nodes, eigenvalues + 0.2 * spectrum_range, u_weights=weights)
    assert close < 0.05 * spectrum_range < shifted


def test_the_fisher_operator_is_accepted_too(ggn):
    operator, _ = ggn
    model, loss, params, data = operator._model_func, operator._loss_func, operator._params, operator._data
    fisher = curvlinops.EFLinearOperator(model, loss, params, data)
    dense = (fisher @ torch.eye(fisher.shape[1], dtype=torch.float64)).numpy()
    top = eigenpairs(fisher, k=1, tol=1e-8, max_iter=fisher.shape[0])
    assert top.values[0] == pytest.approx(np.linalg.eigvalsh((dense + dense.T) / 2).max(), rel=1e-6)
