"""Directions: Gaussian, filter-normalised per output filter / token vector, zeros on the
biasbn tensors, Gram-Schmidt after normalisation, checkpoint differences, Hessian eigenvectors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from landscape_models import tiny_resnet, tiny_resnet_b, tiny_vit

from vitprobe.errors import UserError
from vitprobe.landscape import checkpoint_direction, filter_rule, loss_landscape, orthogonalize, random_direction


def row_norms(tensor: torch.Tensor, rows: int) -> np.ndarray:
    """Norms of ``rows`` consecutive equal slices of the flattened tensor, in float64."""
    flat = tensor.detach().double().numpy().reshape(rows, -1)
    return np.sqrt((flat ** 2).sum(axis=1))


def test_vit_rules_per_filter_token_and_biasbn():
    model = tiny_vit()
    d = random_direction(model, torch.Generator().manual_seed(3))
    weights = dict(model.named_parameters())
    expected_rules = {"blocks.0.attn.qkv.weight": "filter", "patch_embed.proj.weight": "filter",
                      "pos_embed": "token", "cls_token": "token", "reg_token": "token",
                      "blocks.0.norm1.weight": "zero", "blocks.0.attn.qkv.bias": "zero", "head.bias": "zero"}
    for name, rule in expected_rules.items():
        assert filter_rule(name, weights[name]) == rule, name
    # fused qkv: 3 * 8 rows, each scaled to its own weight row
    qkv, w = d["blocks.0.attn.qkv.weight"], weights["blocks.0.attn.qkv.weight"]
    assert qkv.shape == (24, 8)
    np.testing.assert_allclose(row_norms(qkv, 24), row_norms(w, 24), rtol=1e-5)
    # patch embedding conv: one filter per output channel (embedding dimension)
    np.testing.assert_allclose(row_norms(d["patch_embed.proj.weight"], 8),
                               row_norms(weights["patch_embed.proj.weight"], 8), rtol=1e-5)
    # positional embedding (1, 1 cls + 1 reg + 16 patches, 8): one filter per token vector
    pos = weights["pos_embed"]
    tokens = pos.shape[1]
    np.testing.assert_allclose(row_norms(d["pos_embed"], tokens), row_norms(pos, tokens), rtol=1e-5)
    np.testing.assert_allclose(row_norms(d["reg_token"], 1), row_norms(weights["reg_token"], 1), rtol=1e-5)
    for name, w in weights.items():
        if w.dim() == 1:
            assert torch.count_nonzero(d[name]) == 0, name
        elif w.dim() == 2 and name not in ("pos_embed",):
            np.testing.assert_allclose(row_norms(d[name], w.shape[0]), row_norms(w, w.shape[0]), rtol=1e-5,
                                       err_msg=name)


def test_directions_are_gaussian_draws_in_parameter_order():
    model = tiny_vit()
    d = random_direction(model, torch.Generator().manual_seed(5))
    generator = torch.Generator().manual_seed(5)
    draws = {name: torch.randn(p.shape, generator=generator) for name, p in model.named_parameters()}
    # filter normalisation only rescales rows: the row directions are the Gaussian draw's
    g, got = draws["blocks.1.mlp.fc1.weight"], d["blocks.1.mlp.fc1.weight"]
    np.testing.assert_allclose((got / got.norm(dim=1, keepdim=True)).numpy(),
                               (g / g.norm(dim=1, keepdim=True)).numpy(), rtol=1e-5, atol=1e-6)
    assert (g < 0).float().mean() > 0.3  # N(0, 1), not U[0, 1)


def test_resnet_conv_per_output_channel_bn_zero_and_include_bn():
    model = tiny_resnet()
    weights = dict(model.named_parameters())
    d = random_direction(model, torch.Generator().manual_seed(0))
    conv = weights["layer1.0.conv1.weight"]
    np.testing.assert_allclose(row_norms(d["layer1.0.conv1.weight"], conv.shape[0]),
                               row_norms(conv, conv.shape[0]), rtol=1e-5)
    assert torch.count_nonzero(d["bn1.weight"]) == 0 and torch.count_nonzero(d["fc.bias"]) == 0
    included = random_direction(model, torch.Generator().manual_seed(0), include_bn=True)
    for name in ("bn1.weight", "bn1.bias", "fc.bias"):  # Li et al.'s code: d = w for 1-D tensors
        assert torch.equal(included[name], weights[name].detach())
    # the policy changes only the one-dimensional tensors
    assert torch.equal(included["layer1.0.conv1.weight"], d["layer1.0.conv1.weight"])


def test_orthogonalize_after_normalisation_reports_cosine():
    generator = torch.Generator().manual_seed(0)
    a = {"w": torch.randn(5, 3, generator=generator), "b": torch.randn(4, generator=generator)}
    b = {"w": torch.randn(5, 3, generator=generator) + a["w"], "b": torch.randn(4, generator=generator)}
    flat_a = np.concatenate([a["w"].numpy().ravel(), a["b"].numpy().ravel()]).astype(np.float64)
    flat_b = np.concatenate([b["w"].numpy().ravel(), b["b"].numpy().ravel()]).astype(np.float64)
    orthogonal, cosine = orthogonalize(a, b)
    assert cosine == pytest.approx(flat_a @ flat_b / np.linalg.norm(flat_a) / np.linalg.norm(flat_b), rel=1e-6)
    expected = flat_b - (flat_a @ flat_b) / (flat_a @ flat_a) * flat_a
    got = np.concatenate([orthogonal["w"].numpy().ravel(), orthogonal["b"].numpy().ravel()])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert abs(got @ flat_a) < 1e-5 * np.linalg.norm(flat_a) * np.linalg.norm(got)


def test_checkpoint_direction_and_architecture_mismatch():
    a, b = tiny_resnet(), tiny_resnet_b()
    params, buffers = checkpoint_direction(a, b)
    for name, p in a.named_parameters():
        assert torch.equal(params[name], dict(b.named_parameters())[name] - p)
    assert torch.equal(buffers["bn1.running_var"], b.bn1.running_var - a.bn1.running_var)
    assert "bn1.num_batches_tracked" not in buffers
    with pytest.raises(UserError, match="same architecture"):
        checkpoint_direction(a, tiny_vit())


def test_eigen_directions_have_the_hessian_curvature(tiny_batches):
    """d1 is the top eigenvector: unit norm, and the loss's second difference along it is lambda_1."""
    sharpness = pytest.importorskip("vitprobe.sharpness")
    if not hasattr(sharpness, "hessian_spectrum"):
        pytest.skip("vitprobe.sharpness.hessian_spectrum has not landed yet")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.AvgPool2d(4), torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 4),
                                torch.nn.Tanh(), torch.nn.Linear(4, 3)).double().eval()
    batches = [(x.double(), y) for x, y in tiny_batches]
    h = 1e-3
    result = loss_landscape(model, batches, directions="eigen", grid=3, span=(-h, h))
    d1 = result.directions[0]
    assert sum(float((t.double() ** 2).sum()) for t in d1.values()) == pytest.approx(1.0, rel=1e-6)
    # dense Hessian of the mean loss (independent ground truth)
    params = [p for p in model.parameters()]
    flat0 = torch.cat([p.detach().reshape(-1) for p in params])
    sizes = [p.numel() for p in params]

    def mean_loss(flat):
        chunks = torch.split(flat, sizes)
        state = {n: c.view_as(p) for (n, p), c in zip(model.named_parameters(), chunks)}
        total = sum(torch.nn.functional.cross_entropy(torch.func.functional_call(model, state, (x,)), y,
                                                      reduction="sum") for x, y in batches)
        return total / sum(len(y) for _, y in batches)

    dense = torch.autograd.functional.hessian(mean_loss, flat0, vectorize=True)
    values, vectors = torch.linalg.eigh(dense)
    lambda_1 = float(values[-1])
    assert result.info["eigenvalues"][0] == pytest.approx(lambda_1, rel=1e-2)
    got = torch.cat([d1[n].reshape(-1) for n, _ in model.named_parameters()]).double()
    assert abs(float(got @ vectors[:, -1])) == pytest.approx(1.0, abs=1e-3)
    second_difference = (result.loss[0, 0] + result.loss[0, 2] - 2 * result.loss[0, 1]) / h ** 2
    assert second_difference == pytest.approx(lambda_1, rel=2e-2)
