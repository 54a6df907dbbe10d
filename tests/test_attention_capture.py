"""Attention capture on real timm and transformers ViTs: fused or not, DeiT distilled,
registers, non-square dynamic inputs, model left unchanged (HF models: test_attention_hf.py)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from timm.models.deit import VisionTransformerDistilled
from timm.models.vision_transformer import VisionTransformer

from vitprobe.attention import (
    attention_maps,
    attention_rollout,
    attributions,
    gradient_rollout,
    mean_attention_distance,
)
from vitprobe.attention.rollout import rollout
from vitprobe.errors import UserError


def _reference_attention(model: torch.nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    """Attention as timm's unfused path applies it (an independent twin, attn_drop hooks)."""
    twin = copy.deepcopy(model)
    found = []
    for block in twin.blocks:
        block.attn.fused_attn = False
        block.attn.attn_drop.register_forward_hook(lambda m, i, out: found.append(out.detach()))
    with torch.no_grad():
        twin(images)
    return found


def test_fused_capture_equals_unfused(tiny_vit) -> None:
    images = torch.randn(4, 3, 16, 16)
    unfused = copy.deepcopy(tiny_vit)
    for block in tiny_vit.blocks:
        block.attn.fused_attn = True
    for block in unfused.blocks:
        block.attn.fused_attn = False
    fused_maps = attention_maps(tiny_vit, images)
    unfused_maps = attention_maps(unfused, images)
    reference = torch.stack(_reference_attention(tiny_vit, images)).numpy()
    assert fused_maps.weights.shape == (2, 4, 2, 17, 17)
    np.testing.assert_allclose(fused_maps.weights, unfused_maps.weights, atol=1e-6)
    np.testing.assert_allclose(unfused_maps.weights, reference, atol=1e-7)
    np.testing.assert_allclose(fused_maps.weights.sum(-1), 1.0, atol=1e-5)


def test_model_left_exactly_as_found(tiny_vit) -> None:
    images = torch.randn(3, 3, 16, 16)
    tiny_vit.blocks[0].attn.fused_attn = True
    tiny_vit.blocks[1].attn.fused_attn = False
    with torch.no_grad():
        before = tiny_vit(images)
    state = {k: v.clone() for k, v in tiny_vit.state_dict().items()}
    attention_maps(tiny_vit, images)
    attention_rollout(tiny_vit, images, discard_ratio=0.5)
    gradient_rollout(tiny_vit, images)
    mean_attention_distance(tiny_vit, images)
    attributions(tiny_vit, images, method="gradcam")
    assert [b.attn.fused_attn for b in tiny_vit.blocks] == [True, False]
    assert not tiny_vit.training
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in tiny_vit.modules())
    assert all(p.grad is None for p in tiny_vit.parameters())
    for key, value in tiny_vit.state_dict().items():
        assert torch.equal(value, state[key])
    with torch.no_grad():
        assert torch.equal(tiny_vit(images), before)


def test_deit_distilled_layout_and_dist_map() -> None:
    model = VisionTransformerDistilled(img_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2,
                                       num_classes=3).eval()
    images = torch.randn(2, 3, 32, 32)
    maps = attention_maps(model, images)
    assert maps.layout.num_prefix_tokens == 2 and maps.layout.dist_index == 1
    assert maps.weights.shape[-1] == 2 + 16
    np.testing.assert_allclose(maps.weights, torch.stack(_reference_attention(model, images)).numpy(),
                               atol=1e-6)
    result = attention_rollout(model, images, source="both")
    assert result.sources == ["cls", "dist"] and result.maps.shape == (2, 2, 4, 4)
    matrix = rollout([torch.from_numpy(w) for w in maps.weights], protected=2)
    np.testing.assert_allclose(result.maps[:, 1], matrix[:, 1, 2:].reshape(2, 4, 4), atol=1e-6)
    np.testing.assert_allclose(result.maps[:, 0], matrix[:, 0, 2:].reshape(2, 4, 4), atol=1e-6)
    assert gradient_rollout(model, images, source="dist").maps.shape == (2, 1, 4, 4)


def test_register_tokens_layout() -> None:
    model = VisionTransformer(img_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2,
                              reg_tokens=4, num_classes=3).eval()
    images = torch.randn(2, 3, 32, 32)
    maps = attention_maps(model, images, layers=[-1], heads=[1])
    assert maps.layout.num_prefix_tokens == 5 and maps.layout.grid == (4, 4)
    assert maps.layers == [1] and maps.heads == [1]
    reference = _reference_attention(model, images)[1][:, 1]
    np.testing.assert_allclose(maps.query_map(1, 1, (2, 3)), reference[:, 5 + 2 * 4 + 3, 5:].reshape(2, 4, 4),
                               atol=1e-6)
    result = attention_rollout(model, images)
    assert result.maps.shape == (2, 1, 4, 4)
    with pytest.raises(UserError, match="no dist token"):
        attention_rollout(model, images, source="dist")


def test_non_square_input_with_dynamic_img_size() -> None:
    model = VisionTransformer(img_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2,
                              dynamic_img_size=True, num_classes=3).eval()
    images = torch.randn(2, 3, 24, 40)
    maps = attention_maps(model, images)
    assert maps.layout.grid == (3, 5) and maps.weights.shape[-1] == 1 + 15
    np.testing.assert_allclose(maps.weights, torch.stack(_reference_attention(model, images)).numpy(),
                               atol=1e-6)
    assert attention_rollout(model, images).maps.shape == (2, 1, 3, 5)
    assert gradient_rollout(model, images).maps.shape == (2, 1, 3, 5)
    cam = attributions(model, images, method="gradcam")
    assert cam.maps.shape == (2, 1, 24, 40)


def test_fails_loudly_when_a_layer_is_not_captured(tiny_vit, tiny_resnet) -> None:
    class Skip(torch.nn.Module):  # an attention replacement that never computes q and k
        def forward(self, x, **kwargs):
            return x

    skip = Skip()
    for part in ("qkv", "q_norm", "k_norm", "norm"):
        setattr(skip, part, getattr(tiny_vit.blocks[1].attn, part))
    skip.num_heads, skip.head_dim, skip.scale = 2, 4, 0.5
    tiny_vit.blocks[1].attn = skip
    with pytest.raises(UserError, match="1 of 2 layers"):
        attention_rollout(tiny_vit, torch.randn(1, 3, 16, 16))
    with pytest.raises(UserError, match="no attention layers"):
        attention_maps(tiny_resnet, torch.randn(1, 3, 16, 16))


def test_data_forms_are_accepted(tiny_vit, tiny_batches) -> None:
    from vitprobe.data.batches import Batches

    images = torch.cat([x for x, _ in tiny_batches])
    labels = torch.cat([y for _, y in tiny_batches])
    base = attention_rollout(tiny_vit, images).maps
    for data in (tiny_batches, Batches(tiny_batches), (images, labels), iter(tiny_batches)):
        np.testing.assert_allclose(attention_rollout(tiny_vit, data).maps, base, atol=1e-6)
    by_label = gradient_rollout(tiny_vit, tiny_batches, target="label")
    np.testing.assert_array_equal(by_label.targets, labels.numpy())


def test_attributions_match_captum_run_directly(tiny_resnet) -> None:
    from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam, Saliency

    images = torch.randn(3, 3, 16, 16)
    target = tiny_resnet(images).argmax(-1)
    cam = attributions(tiny_resnet, images, method="gradcam")
    assert cam.options["layer"] == "layer2"  # the last stage with 2x2 positions at 16 px
    expected = LayerGradCam(tiny_resnet, tiny_resnet.layer2).attribute(images, target=target,
                                                                      relu_attributions=True)
    expected = LayerAttribution.interpolate(expected, (16, 16), "bilinear")
    np.testing.assert_allclose(cam.maps, expected.detach().numpy(), rtol=1e-5, atol=1e-7)
    assert attributions(tiny_resnet, torch.randn(1, 3, 64, 64), method="gradcam").options["layer"] == "layer4"
    sal = attributions(tiny_resnet, images, method="saliency")
    grad = Saliency(tiny_resnet).attribute(images.clone().requires_grad_(), target=target)
    np.testing.assert_allclose(sal.maps[:, 0], grad.amax(1).detach().numpy(), rtol=1e-5, atol=1e-8)
    ig = attributions(tiny_resnet, images, method="captum-ig", integration_steps=8)
    ref = IntegratedGradients(tiny_resnet).attribute(images, target=target, baselines=0.0, n_steps=8)
    np.testing.assert_allclose(ig.maps[:, 0], ref.abs().sum(1).detach().numpy(), rtol=1e-4, atol=1e-7)
    assert ig.maps.shape == (3, 1, 16, 16)


def test_vit_gradcam_uses_the_last_block_input_tokens(tiny_vit) -> None:
    """Grad-CAM of a ViT by hand: gradient of the logit w.r.t. the last block's input patch
    tokens, channel weights = mean over patches, ReLU(sum_c w_c x_c) on the 4x4 grid."""
    images = torch.randn(2, 3, 16, 16)
    cam = attributions(tiny_vit, images, method="gradcam", target=2)
    seen = []
    handle = tiny_vit.blocks[-1].register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    logits = tiny_vit(images)
    handle.remove()
    grad = torch.autograd.grad(logits[:, 2].sum(), seen[0])[0][:, 1:]
    tokens = seen[0][:, 1:]
    weights = grad.mean(1, keepdim=True)
    by_hand = torch.relu((weights * tokens).sum(-1)).reshape(2, 1, 4, 4)
    by_hand = torch.nn.functional.interpolate(by_hand, size=(16, 16), mode="bilinear", align_corners=False)
    np.testing.assert_allclose(cam.maps, by_hand.detach().numpy(), rtol=1e-4, atol=1e-7)
