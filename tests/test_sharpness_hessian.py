"""Hessian operator and solvers against a dense Hessian (float64, explicit double backward on the
whole data as one batch) of tiny real timm models."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import wasserstein_distance
from timm.models.resnet import BasicBlock, ResNet
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from vitprobe.errors import UserError
from vitprobe.models.attention_path import math_attention
from vitprobe.sharpness import HessianOperator, hessian_density, hessian_spectrum
from vitprobe.sharpness.trace import trace_of


def dense_hessian(model: nn.Module, batches, names: list[str] | None = None) -> np.ndarray:
    """Hessian of the mean cross-entropy over all images (one batch), in float64."""
    model = copy.deepcopy(model).double().eval()
    x = torch.cat([b[0] for b in batches]).double()
    y = torch.cat([b[1] for b in batches])
    params = [p for n, p in model.named_parameters() if names is None or n in names]
    size = sum(p.numel() for p in params)
    with math_attention(model):
        loss = F.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    flat = torch.cat([g.reshape(-1) for g in grads])
    rows = torch.autograd.grad(flat, params, torch.eye(size, dtype=torch.float64), is_grads_batched=True)
    hessian = torch.cat([r.reshape(size, -1) for r in rows], dim=1).numpy()
    return (hessian + hessian.T) / 2


def small_vit() -> VisionTransformer:
    return VisionTransformer(img_size=8, patch_size=4, embed_dim=8, depth=1, num_heads=2, mlp_ratio=1.0,
                             num_classes=3).eval()


def small_resnet() -> ResNet:
    """A timm ResNet with BatchNorm whose running statistics are not the defaults."""
    model = ResNet(BasicBlock, [1, 1, 1, 1], channels=(2, 2, 2, 2), stem_width=2, stem_type="deep",
                   num_classes=3)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, 3, 8, 8))
    return model.eval()


def batches_of(sizes, hw: int = 8, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, 3, hw, hw, generator=generator), torch.randint(0, 3, (n,), generator=generator))
            for n in sizes]


@pytest.fixture(scope="module")
def vit_case():
    torch.manual_seed(0)
    model, data = small_vit(), batches_of((5, 5, 3))
    return model, data, dense_hessian(model, data)


@pytest.fixture(scope="module")
def resnet_case():
    torch.manual_seed(0)
    model, data = small_resnet(), batches_of((6, 4))
    return model, data, dense_hessian(model, data)


def top(eigenvalues: np.ndarray, k: int) -> np.ndarray:
    return np.sort(eigenvalues)[::-1][:k]


def test_hvp_matches_dense_and_weights_unequal_batches(vit_case):
    model, data, hessian = vit_case
    operator = HessianOperator(model, data, keep_graphs=True)
    recomputed = HessianOperator(model, data, keep_graphs=False)
    assert operator.keep_graphs and not recomputed.keep_graphs
    v = torch.randn(operator.size, generator=torch.Generator().manual_seed(3))
    expected = hessian @ v.double().numpy()
    for op in (operator, recomputed):
        got = op.matvec(v).double().numpy()
        assert np.linalg.norm(got - expected) < 1e-5 * np.linalg.norm(expected)
    # numpy in, numpy out; per-parameter lists in, lists out; scipy operator; the count of products
    assert np.allclose(operator.matvec(v.double().numpy()), expected, rtol=1e-4, atol=1e-5)
    parts = operator.matvec(operator.split(v))
    assert [p.shape for p in parts] == [p.shape for p in model.parameters()]
    assert np.allclose(operator.to_scipy() @ v.double().numpy(), expected, rtol=1e-4, atol=1e-5)
    assert operator.hvps == 4
    # the batch-size weighting matters here: the plain mean of per-batch Hessians differs
    unweighted = sum(dense_hessian(model, [b]) for b in data) / len(data)
    assert np.linalg.norm(unweighted @ v.double().numpy() - expected) > 1e-2 * np.linalg.norm(expected)


@pytest.mark.parametrize("case", ["vit_case", "resnet_case"])
def test_lanczos_top3_matches_dense(case, request):
    model, data, hessian = request.getfixturevalue(case)
    eigenvalues = np.linalg.eigvalsh(hessian)
    result = hessian_spectrum(model, data, k=3, tol=1e-4)
    assert result.converged and result.method == "lanczos"
    np.testing.assert_allclose(result.eigenvalues, top(eigenvalues, 3), rtol=1e-3)
    assert (result.residuals < 1e-4).all() and (np.diff(result.hvps) >= 0).all()
    assert result.total_hvps == result.hvps.max() < 60
    # eigenvectors: per-parameter tensors aligned with param_names, true residual small
    assert result.param_names == [n for n, _ in model.named_parameters()]
    for value, vector in zip(result.eigenvalues, result.eigenvectors):
        assert [t.shape for t in vector] == [p.shape for p in model.parameters()]
        y = torch.cat([t.reshape(-1) for t in vector]).double().numpy()
        assert abs(np.linalg.norm(y) - 1) < 1e-5
        assert np.linalg.norm(hessian @ y - value * y) < 1e-3 * abs(value)
    frame = result.to_frame()
    assert list(frame["k"]) == [1, 2, 3] and set(frame["metric"]) == {"eigenvalue"}


def test_parameter_block_matches_dense_block(tiny_resnet, tiny_batches):
    names = [n for n, _ in tiny_resnet.named_parameters() if n.startswith("layer4.")]
    hessian = dense_hessian(tiny_resnet, tiny_batches, names)
    result = hessian_spectrum(tiny_resnet, tiny_batches, k=3, tol=1e-4, params=r"^layer4\.")
    assert result.param_names == names and result.parameters == hessian.shape[0]
    np.testing.assert_allclose(result.eigenvalues, top(np.linalg.eigvalsh(hessian), 3), rtol=1e-3)
    by_callable = hessian_spectrum(tiny_resnet, tiny_batches, k=1, tol=1e-4,
                                   params=lambda name, p: name.startswith("layer4."))
    np.testing.assert_allclose(by_callable.eigenvalues[0], result.eigenvalues[0], rtol=1e-4)


def test_power_iteration_finds_largest_magnitude(vit_case):
    model, data, hessian = vit_case
    eigenvalues = np.linalg.eigvalsh(hessian)
    largest_magnitude = eigenvalues[np.argmax(np.abs(eigenvalues))]
    result = hessian_spectrum(model, data, k=1, tol=1e-4, method="power", max_iter=500)
    assert result.converged
    np.testing.assert_allclose(result.eigenvalues[0], largest_magnitude, rtol=1e-3)


def test_pyhessian_method_agrees_with_dense_and_leaves_model_alone(vit_case):
    model, data, hessian = vit_case
    eigenvalues = np.linalg.eigvalsh(hessian)
    largest_magnitude = eigenvalues[np.argmax(np.abs(eigenvalues))]  # PyHessian is power iteration
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for batches in (data[:1], data):  # PyHessian's single-batch and dataloader paths
        eigenvalues_b = np.linalg.eigvalsh(dense_hessian(model, batches)) if len(batches) == 1 else eigenvalues
        expected = eigenvalues_b[np.argmax(np.abs(eigenvalues_b))]
        result = hessian_spectrum(model, batches, k=1, tol=1e-5, method="pyhessian", max_iter=300)
        np.testing.assert_allclose(result.eigenvalues[0], expected, rtol=1e-2)
        assert result.total_hvps > 1 and np.isfinite(result.residuals).all()
    assert largest_magnitude == expected
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_trace_within_standard_error_of_dense(vit_case):
    model, data, hessian = vit_case
    truth = float(np.trace(hessian))
    operator = HessianOperator(model, data)
    plus = trace_of(operator, method="hutch++", num_probes=60)
    plain = trace_of(operator, method="hutchinson", num_probes=60)
    for result in (plus, plain):
        assert result.hvps == 60
        assert abs(result.trace - truth) < 3 * result.std_error
        assert abs(result.trace - truth) < 0.15 * np.abs(np.linalg.eigvalsh(hessian)).sum()
    assert plus.std_error < plain.std_error  # a few eigenvalues dominate this Hessian


@pytest.mark.parametrize("reorthogonalise", [True, False])
def test_density_integrates_to_one_where_the_spectrum_is(vit_case, reorthogonalise):
    model, data, hessian = vit_case
    eigenvalues = np.linalg.eigvalsh(hessian)
    result = hessian_density(model, data, num_probes=6, max_iter=30, reorthogonalise=reorthogonalise)
    assert result.hvps == 6 * 30
    assert abs(np.trapezoid(result.density, result.grid) - 1) < 1e-3
    np.testing.assert_allclose(np.nansum(result.weights, axis=1), 1 / 6)
    valid = np.isfinite(result.nodes)
    nodes, weights = result.nodes[valid], result.weights[valid]
    spread = eigenvalues.max() - eigenvalues.min()
    assert nodes.min() > eigenvalues.min() - 1e-3 * spread and nodes.max() < eigenvalues.max() + 1e-3 * spread
    # the quadrature measure is close to the empirical spectral measure, and far from a shifted one
    distance = wasserstein_distance(nodes, eigenvalues, u_weights=weights)
    assert distance < 0.02 * spread
    assert wasserstein_distance(nodes, eigenvalues + 0.1 * spread, u_weights=weights) > 4 * distance


def test_density_kernel_width_is_pyhessians(vit_case):
    """PyHessian's density_generate (density_plot.py): variance 1e-5 * max(1, lambda_max -
    lambda_min), lambda_max/min = mean over runs of each run's largest/smallest node -/+ 0.01."""
    from vitprobe.sharpness.density import smooth

    model, data, _ = vit_case
    result = hessian_density(model, data, num_probes=3, max_iter=12)
    high = np.mean(np.nanmax(result.nodes, axis=1)) + 0.01
    low = np.mean(np.nanmin(result.nodes, axis=1)) - 0.01
    assert result.sigma == pytest.approx(np.sqrt(1e-5 * max(1.0, high - low)), rel=1e-12)
    # one isolated node: the smoothed density around it is a Gaussian of that standard deviation
    grid, density, sigma = smooth(np.array([[0.0, 50.0]]), np.array([[0.5, 0.5]]))
    lobe = grid < 25
    spread = np.sqrt(np.trapezoid(grid[lobe] ** 2 * density[lobe], grid[lobe])
                     / np.trapezoid(density[lobe], grid[lobe]))
    assert sigma == pytest.approx(np.sqrt(1e-5 * 50.02)) and spread == pytest.approx(sigma, rel=0.01)


def test_unused_parameters_and_zero_curvature_blocks_do_not_crash(tiny_vit, tiny_batches):
    tiny_vit.unused = nn.Parameter(torch.ones(4))
    result = hessian_spectrum(tiny_vit, tiny_batches, k=2, tol=1e-3)
    assert "unused" in result.param_names and result.converged
    unused = result.eigenvectors[0][result.param_names.index("unused")]
    assert unused.abs().max() < 1e-8
    # a parameter block whose Hessian is zero (the loss is linear in the head bias)
    bias = hessian_spectrum(tiny_vit, tiny_batches, k=1, params=r"^unused$", max_iter=5)
    assert bias.eigenvalues[0] == 0


def test_non_finite_loss_is_a_user_error(tiny_vit, tiny_batches):
    with torch.no_grad():
        tiny_vit.head.weight[0, 0] = float("nan")
    with pytest.raises(UserError, match="not finite"):
        HessianOperator(tiny_vit, tiny_batches)
    with pytest.raises(UserError):
        hessian_spectrum(tiny_vit, tiny_batches, params="no_such_parameter")
