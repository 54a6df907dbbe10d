"""Rollout, gradient rollout and mean attention distance against hand computations and
closed forms."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.spatial.distance import cdist
from timm.models.vision_transformer import VisionTransformer

from vitprobe.attention import attention_rollout, gradient_rollout, mean_attention_distance
from vitprobe.attention.distance import attention_distances, t_interval
from vitprobe.attention.gradient_rollout import gradient_rollout_matrix
from vitprobe.attention.rollout import discard_lowest, fuse_heads, rollout
from vitprobe.errors import UserError
from vitprobe.models.token_layout import TokenLayout


def test_rollout_two_layers_by_hand() -> None:
    a1 = torch.tensor([[0.5, 0.25, 0.25], [0.2, 0.6, 0.2], [0.1, 0.3, 0.6]])
    a2 = torch.tensor([[0.2, 0.4, 0.4], [0.5, 0.5, 0.0], [0.3, 0.3, 0.4]])
    r = rollout([a1[None, None], a2[None, None]])[0]
    # Â1 = (A1 + I)/2, Â2 = (A2 + I)/2; row 0 of Â2 Â1 worked out on paper
    torch.testing.assert_close(r[0], torch.tensor([0.48, 0.265, 0.255]))
    torch.testing.assert_close(r.sum(-1), torch.ones(3))
    # from layer 1 only: R = Â2
    r2 = rollout([a2[None, None]])[0]
    torch.testing.assert_close(r2[1], torch.tensor([0.25, 0.75, 0.0]))


def test_discard_is_per_row_and_per_image_and_keeps_the_class_column() -> None:
    image0 = torch.tensor([[0.1, 0.5, 0.3, 0.1], [0.2, 0.3, 0.4, 0.1], [0.3, 0.3, 0.2, 0.2],
                           [0.25, 0.25, 0.25, 0.25]])
    image1 = torch.tensor([[0.4, 0.05, 0.25, 0.3], [0.1, 0.2, 0.3, 0.4], [0.3, 0.3, 0.2, 0.2],
                           [0.25, 0.25, 0.25, 0.25]])
    attention = torch.stack([image0, image1])[:, None]
    kept = discard_lowest(fuse_heads(attention), 0.4, protected=1)  # int(0.4 * 3) = 1 per row
    # image 0 row 0: the class column (0.1) is protected; patch 3 (0.1) goes
    torch.testing.assert_close(kept[0, 0], torch.tensor([0.1, 0.5, 0.3, 0.0]))
    torch.testing.assert_close(kept[0, 1], torch.tensor([0.2, 0.3, 0.4, 0.0]))
    # image 1 row 0 drops its own lowest patch (column 1), not image 0's choice
    torch.testing.assert_close(kept[1, 0], torch.tensor([0.4, 0.0, 0.25, 0.3]))
    torch.testing.assert_close(kept[1, 1], torch.tensor([0.1, 0.0, 0.3, 0.4]))
    r = rollout([attention], discard_ratio=0.4)
    torch.testing.assert_close(r[0, 0], torch.tensor([1.1, 0.5, 0.3, 0.0]) / 1.9)
    torch.testing.assert_close(r[1, 0], torch.tensor([1.4, 0.0, 0.25, 0.3]) / 1.95)


def test_head_fusions() -> None:
    heads = torch.tensor([[[0.2, 0.8], [0.6, 0.4]], [[0.6, 0.4], [0.1, 0.9]]])[None]
    torch.testing.assert_close(fuse_heads(heads, "mean")[0], torch.tensor([[0.4, 0.6], [0.35, 0.65]]))
    torch.testing.assert_close(fuse_heads(heads, "max")[0], torch.tensor([[0.6, 0.8], [0.6, 0.9]]))
    torch.testing.assert_close(fuse_heads(heads, "min")[0], torch.tensor([[0.2, 0.4], [0.1, 0.4]]))
    with pytest.raises(UserError):
        fuse_heads(heads, "median")


def test_gradient_rollout_matrix_by_hand() -> None:
    a1 = torch.tensor([[0.6, 0.4], [0.3, 0.7]])[None, None]
    g1 = torch.tensor([[1.0, -1.0], [2.0, 0.5]])[None, None]
    # (g*a)+ = [[0.6, 0], [0.6, 0.35]]; R = I + that
    r1 = gradient_rollout_matrix([a1], [g1])
    torch.testing.assert_close(r1[0], torch.tensor([[1.6, 0.0], [0.6, 1.35]]))
    # second layer, two heads whose positive parts average to [[0, 0.5], [0.1, 0]]
    a2 = torch.tensor([[[0.5, 0.5], [0.2, 0.8]], [[0.5, 0.5], [0.5, 0.5]]])[None]
    g2 = torch.tensor([[[-1.0, 2.0], [1.0, -1.0]], [[0.0, 0.0], [-1.0, 0.0]]])[None]
    r2 = gradient_rollout_matrix([a1, a2], [g1, g2])
    torch.testing.assert_close(r2[0], torch.tensor([[1.9, 0.675], [0.76, 1.35]]))


def test_gradient_rollout_matches_explicit_attention_gradients(tiny_vit) -> None:
    images = torch.randn(3, 3, 16, 16)
    for block in tiny_vit.blocks:
        block.attn.fused_attn = True
    result = gradient_rollout(tiny_vit, images, target=1)
    # reference: the unfused twin, attention read where timm applies it, d logit_1 / dA by autograd
    twin = copy.deepcopy(tiny_vit)
    attentions = []
    for block in twin.blocks:
        block.attn.fused_attn = False
        block.attn.attn_drop.register_forward_hook(lambda m, i, out: attentions.append(out))
    logits = twin(images)
    grads = torch.autograd.grad(logits[:, 1].sum(), attentions)
    relevance = torch.eye(17).repeat(3, 1, 1)
    for attention, grad in zip(attentions, grads):
        relevance = relevance + (grad * attention).clamp(min=0).mean(1) @ relevance
    expected = relevance[:, 0, 1:].reshape(3, 1, 4, 4).detach().numpy()
    np.testing.assert_allclose(result.maps, expected, rtol=1e-4, atol=1e-7)
    assert (result.targets == 1).all()
    assert all(p.grad is None for p in tiny_vit.parameters())


def test_rollout_of_a_model_matches_the_pure_function(tiny_vit) -> None:
    images = torch.randn(2, 3, 16, 16)
    attentions = []
    hooks = []
    for block in tiny_vit.blocks:
        block.attn.fused_attn = False
        hooks.append(block.attn.attn_drop.register_forward_hook(lambda m, i, out: attentions.append(out)))
    with torch.no_grad():
        tiny_vit(images)
    for hook in hooks:
        hook.remove()
    for fusion, discard, start in (("mean", 0.0, 0), ("max", 0.5, 0), ("min", 0.25, 1)):
        result = attention_rollout(tiny_vit, images, head_fusion=fusion, discard_ratio=discard,
                                   start_layer=start)
        expected = rollout(attentions[start:], fusion, discard, protected=1)[:, 0, 1:]
        np.testing.assert_allclose(result.maps[:, 0], expected.reshape(2, 4, 4).numpy(),
                                   rtol=1e-5, atol=1e-7)


def _uniform_vit(**kwargs) -> VisionTransformer:
    """A timm ViT whose queries and keys are zero: every attention row is exactly uniform."""
    model = VisionTransformer(embed_dim=8, depth=2, num_heads=2, mlp_ratio=1.0, num_classes=2,
                              **kwargs).eval()
    with torch.no_grad():
        for block in model.blocks:
            block.attn.qkv.weight[:16].zero_()
            block.attn.qkv.bias[:16].zero_()
    return model


def _uniform_closed_form(grid: tuple[int, int], patch: tuple[int, int]) -> float:
    rows, cols = np.meshgrid(np.arange(grid[0]) * patch[0], np.arange(grid[1]) * patch[1], indexing="ij")
    centres = np.stack([rows.ravel(), cols.ravel()], 1).astype(float)
    return float(cdist(centres, centres).mean())


def test_mean_attention_distance_of_uniform_attention_is_the_closed_form() -> None:
    model = _uniform_vit(img_size=224, patch_size=16)
    result = mean_attention_distance(model, torch.randn(2, 3, 224, 224))
    closed = _uniform_closed_form((14, 14), (16, 16))
    assert closed == pytest.approx(116.49, abs=0.01)
    np.testing.assert_allclose(result.renormalised, closed, rtol=1e-9)
    # raw: the class token keeps 1/197 of every row out of the sum
    np.testing.assert_allclose(result.raw, closed * 196 / 197, rtol=1e-6)
    assert result.baseline == pytest.approx(closed, rel=1e-12)
    frame = result.to_frame()
    assert set(frame.metric) == {"mean_attention_distance", "mean_attention_distance_renormalised",
                                 "layer_attention_distance", "uniform_attention_distance"}
    headline = frame[frame.metric == "mean_attention_distance"]
    assert len(headline) == 2 * 2
    # the headline is the paper's raw value (prefix mass left out), not the renormalised one
    np.testing.assert_allclose(headline["value"], closed * 196 / 197, rtol=1e-6)
    per_layer = frame[frame.metric == "layer_attention_distance"]
    np.testing.assert_allclose(per_layer["value"], closed * 196 / 197, rtol=1e-6)
    assert per_layer["layer"].tolist() == [0, 1] and per_layer["head"].isna().all()


def test_mean_attention_distance_non_square_patches_and_grid() -> None:
    model = _uniform_vit(img_size=(64, 96), patch_size=(16, 8))
    result = mean_attention_distance(model, torch.randn(1, 3, 64, 96))
    assert result.layout.grid == (4, 12)
    np.testing.assert_allclose(result.renormalised, _uniform_closed_form((4, 12), (16, 8)), rtol=1e-9)


def test_attention_distance_by_hand_and_t_interval() -> None:
    layout = TokenLayout(num_prefix_tokens=1, grid=(1, 2), patch_size=(4, 4))
    attention = torch.tensor([[0.6, 0.2, 0.2], [0.5, 0.25, 0.25], [0.2, 0.4, 0.4]])[None, None]
    raw, renorm = attention_distances(attention, layout)
    # query 0: 0.25 * 4 px (raw), 0.25 * 4 / 0.5 (renormalised); query 1: 0.4 * 4, 0.4 * 4 / 0.8
    assert raw.item() == pytest.approx((1.0 + 1.6) / 2)
    assert renorm.item() == pytest.approx(2.0)
    values = np.array([[1.0], [2.0], [4.0], [7.0]])
    mean, low, high = t_interval(values, 0.95)
    ref = stats.t.interval(0.95, 3, loc=values.mean(), scale=stats.sem(values[:, 0]))
    assert (low[0], high[0]) == pytest.approx(ref)
