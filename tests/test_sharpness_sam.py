"""SAM and Keskar sharpness against closed forms on quadratic and linear losses, and on a timm ViT."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from vitprobe.errors import UserError
from vitprobe.sharpness import keskar_sharpness, sam_sharpness


def squared_error(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return ((outputs.squeeze(-1) - targets) ** 2).mean()


@pytest.fixture
def regression():
    """L(w) = mean((X w - y)^2): a quadratic with gradient g = 2 X^T (X w - y) / N and Hessian 2 A,
    A = X^T X / N, so L(w + e) - L(w) = g.e + e^T A e exactly."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(12, 5, generator=generator, dtype=torch.float64)
    y = torch.randn(12, generator=generator, dtype=torch.float64)
    model = nn.Linear(5, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.randn(1, 5, generator=generator, dtype=torch.float64))
    w = model.weight.detach().numpy().ravel().copy()
    xn, yn = x.numpy(), y.numpy()
    g = 2 * xn.T @ (xn @ w - yn) / len(yn)
    a = xn.T @ xn / len(yn)
    return model, (x, y), w, g, a


def increase(g: np.ndarray, a: np.ndarray, e: np.ndarray) -> float:
    return float(g @ e + e @ a @ e)


def exact_ball_maximum(g: np.ndarray, a: np.ndarray, rho: float) -> float:
    """max over ||e|| <= rho of g.e + e^T A e (A positive semi-definite): the maximiser is
    e = (mu I - A)^-1 g / 2 with mu > lambda_max(A) and ||e|| = rho (trust-region subproblem)."""
    top = np.linalg.eigvalsh(a).max()
    low, high = top + 1e-12, top + 1e6
    for _ in range(200):
        mu = (low + high) / 2
        e = np.linalg.solve(mu * np.eye(len(g)) - a, g) / 2
        low, high = (mu, high) if np.linalg.norm(e) > rho else (low, mu)
    return increase(g, a, e)


def test_one_step_sam_matches_the_closed_form(regression):
    model, data, w, g, a = regression
    rhos = [0.0, 0.01, 0.1, 0.5]
    result = sam_sharpness(model, data, rho=rhos, loss_fn=squared_error)
    expected = [increase(g, a, r * g / np.linalg.norm(g)) for r in rhos]
    np.testing.assert_allclose(result.sharpness, expected, rtol=1e-9, atol=1e-12)
    assert result.sharpness[0] == 0 and (np.diff(result.sharpness) > 0).all()
    # ASAM: e = rho T^2 g / ||T g|| with T = |w| + eta
    t = np.abs(w) + 0.01
    adaptive = sam_sharpness(model, data, rho=0.1, adaptive=True, loss_fn=squared_error)
    np.testing.assert_allclose(adaptive.sharpness[0], increase(g, a, 0.1 * t ** 2 * g / np.linalg.norm(t * g)),
                               rtol=1e-9)


def test_asam_scales_weights_only_as_the_reference():
    """SamsungLabs' ASAM: T = |w| + eta for parameters named *weight*, T = 1 for the bias."""
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(12, 4, generator=generator, dtype=torch.float64)
    y = torch.randn(12, generator=generator, dtype=torch.float64)
    model = nn.Linear(4, 1).double()
    w = np.concatenate([model.weight.detach().numpy().ravel(), model.bias.detach().numpy()])
    xa = np.concatenate([x.numpy(), np.ones((12, 1))], axis=1)
    g = 2 * xa.T @ (xa @ w - y.numpy()) / 12
    a = xa.T @ xa / 12
    for scope, t in (("weights", np.append(np.abs(w[:4]) + 0.01, 1.0)), ("all", np.abs(w) + 0.01)):
        result = sam_sharpness(model, (x, y), rho=0.1, adaptive=True, adaptive_scope=scope,
                               loss_fn=squared_error)
        np.testing.assert_allclose(result.sharpness[0], increase(g, a, 0.1 * t ** 2 * g / np.linalg.norm(t * g)),
                                   rtol=1e-9)


def test_multi_step_sam_approaches_the_exact_maximum(regression):
    model, data, w, g, a = regression
    rho = 2.0  # large enough for the curvature to turn the maximiser away from g
    one = sam_sharpness(model, data, rho=rho, loss_fn=squared_error).sharpness[0]
    many = sam_sharpness(model, data, rho=rho, ascent_steps=20, loss_fn=squared_error).sharpness[0]
    exact = exact_ball_maximum(g, a, rho)
    assert one < exact - 1e-3  # the first-order step is not the maximum here
    assert one < many <= exact + 1e-9 and exact - many < 1e-2 * (exact - one)


def test_m_sharpness_averages_per_micro_batch(regression):
    model, (x, y), w, g, a = regression
    result = sam_sharpness(model, (x, y), rho=0.1, m=4, loss_fn=squared_error)
    parts = []
    for i in range(0, 12, 4):
        xi, yi = x[i:i + 4].numpy(), y[i:i + 4].numpy()
        gi = 2 * xi.T @ (xi @ w - yi) / 4
        parts.append(increase(gi, xi.T @ xi / 4, 0.1 * gi / np.linalg.norm(gi)))
    np.testing.assert_allclose(result.sharpness[0], np.mean(parts), rtol=1e-9)
    assert result.to_frame()["m"].iloc[0] == 4


def test_sam_on_a_vit_is_zero_at_zero_grows_and_leaves_the_model_alone(tiny_vit, tiny_batches):
    before = {k: v.clone() for k, v in tiny_vit.state_dict().items()}
    result = sam_sharpness(tiny_vit, tiny_batches, rho=[0.0, 0.005, 0.02, 0.05], ascent_steps=2)
    assert result.sharpness[0] == 0 and (np.diff(result.sharpness) > 0).all()
    keskar_sharpness(tiny_vit, tiny_batches, epsilon=1e-3, max_iter=3)
    assert all(torch.equal(before[k], v) for k, v in tiny_vit.state_dict().items())
    assert all(p.grad is None for p in tiny_vit.parameters()) and not tiny_vit.training


def test_keskar_on_a_linear_loss_is_the_box_corner():
    """f(w) = mean(X w) + b + 2 is linear: the box maximum is f + sum_i eps (|w_i| + 1) |c_i|."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(10, 6, generator=generator, dtype=torch.float64)
    model = nn.Linear(6, 1).double()
    loss_fn = lambda outputs, _: outputs.mean() + 2.0
    w = np.concatenate([model.weight.detach().numpy().ravel(), model.bias.detach().numpy()])
    c = np.concatenate([x.mean(0).numpy(), [1.0]])
    f = float(c @ w + 2.0)
    for epsilon in (1e-3, 5e-2):
        result = keskar_sharpness(model, (x, torch.zeros(10)), epsilon=epsilon, loss_fn=loss_fn)
        expected = 100 * (epsilon * (np.abs(w) + 1) @ np.abs(c)) / (1 + f)
        np.testing.assert_allclose(result.sharpness, expected, rtol=1e-9)
        assert result.loss == pytest.approx(f)
    subspace = keskar_sharpness(model, (x, torch.zeros(10)), epsilon=1e-3, subspace_dim=3, loss_fn=loss_fn)
    assert 0 < subspace.sharpness and subspace.to_frame()["method"].iloc[0] == "subspace p=3"


def test_bad_inputs_are_user_errors(tiny_vit, tiny_batches):
    with pytest.raises(UserError):
        sam_sharpness(tiny_vit, tiny_batches, rho=-1)
    with torch.no_grad():
        tiny_vit.head.bias.fill_(float("inf"))
    with pytest.raises(UserError, match="not finite"):
        sam_sharpness(tiny_vit, tiny_batches)
    with pytest.raises(UserError, match="not finite"):
        keskar_sharpness(tiny_vit, tiny_batches)


def _converged_logistic_model() -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    """A 2-class linear classifier on 3 separable points (float64), trained to a small loss."""
    torch.manual_seed(0)
    x = torch.tensor([[1.0, 0.5], [-1.0, -0.3], [0.8, -0.9]], dtype=torch.float64)
    y = torch.tensor([0, 1, 0])
    model = nn.Linear(2, 2).double()
    optimiser = torch.optim.LBFGS(model.parameters(), max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimiser.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    for _ in range(5):
        optimiser.step(closure)
    return model.eval(), (x, y)


def test_keskar_on_a_converged_model_finds_the_brute_force_maximum():
    """Cross-entropy of a linear model is convex in its 6 weights, so the box maximum is at one of
    its 64 corners: enumerate them. From the sign corner, and by projected ascent, vitprobe finds
    it; started at the box centre (the literal reading) on the float32 model, L-BFGS-B returns 0."""
    import itertools

    model, (x, y) = _converged_logistic_model()
    w = torch.cat([model.weight.detach().ravel(), model.bias.detach()]).double()
    with torch.no_grad():
        loss0 = float(nn.functional.cross_entropy(model(x), y))
    assert loss0 < 1e-3
    epsilon = 5e-2
    h = epsilon * (w.abs() + 1)
    best = -np.inf
    for signs in itertools.product((-1.0, 1.0), repeat=6):
        v = w + h * torch.tensor(signs, dtype=torch.float64)
        logits = x @ v[:4].reshape(2, 2).T + v[4:]
        best = max(best, float(nn.functional.cross_entropy(logits, y)))
    expected = (best - loss0) / (1 + loss0) * 100
    corner = keskar_sharpness(model, (x, y), epsilon=epsilon)
    projected = keskar_sharpness(model, (x, y), epsilon=epsilon, method="projected")
    np.testing.assert_allclose([corner.sharpness, projected.sharpness], expected, rtol=1e-4)
    frame = corner.to_frame()  # the corner is a KKT point here: scipy says so, and it is recorded
    assert frame["solver"].iloc[0] == "lbfgsb" and "PGTOL" in frame["solver_message"].iloc[0]
    # the defect the corner start fixes: in float32, L-BFGS-B from the centre finds nothing
    import copy

    model32, x32 = copy.deepcopy(model).float(), x.float()
    assert keskar_sharpness(model32, (x32, y), epsilon=epsilon, start="centre").sharpness == 0.0
    assert keskar_sharpness(model32, (x32, y), epsilon=epsilon).sharpness > 0.5 * expected


def test_keskar_subspace_never_builds_the_n_by_p_matrix():
    """A^+ x from the chunked A equals numpy's pseudo-inverse of the same A."""
    from vitprobe.sharpness.keskar import RandomSubspace

    x = torch.randn(70, dtype=torch.float64)
    subspace = RandomSubspace(70, 4, seed=3, device=torch.device("cpu"))
    dense = torch.cat([block for _, block in subspace._chunks()]).numpy()
    np.testing.assert_allclose(subspace.pseudo_inverse_times(x).numpy(), np.linalg.pinv(dense) @ x.numpy(),
                               rtol=1e-10)
    y = torch.randn(4, dtype=torch.float64)
    np.testing.assert_allclose(subspace.times(y).numpy(), dense @ y.numpy(), rtol=1e-12)
