"""Attention capture on transformers ViT / DeiT (the ``hf`` extra), built from configs with
random weights, against transformers' own ``output_attentions``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vitprobe.attention import attention_maps, attention_rollout, attributions, gradient_rollout

transformers = pytest.importorskip("transformers")


def _hf_config(cls, **extra):
    return cls(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
               intermediate_size=32, num_labels=3, **extra)


def test_hf_vit_capture_equals_output_attentions() -> None:
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    eager = ViTForImageClassification(_hf_config(ViTConfig, attn_implementation="eager")).eval()
    sdpa = ViTForImageClassification(_hf_config(ViTConfig, attn_implementation="sdpa")).eval()
    sdpa.load_state_dict(eager.state_dict())
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        own = eager(pixel_values=images, output_attentions=True).attentions
    assert len(own) == 2
    for model in (eager, sdpa):
        maps = attention_maps(model, images)
        assert maps.layout.num_prefix_tokens == 1 and maps.layout.grid == (4, 4)
        np.testing.assert_allclose(maps.weights, torch.stack(own).numpy(), atol=1e-6)
    assert sdpa.config._attn_implementation == "sdpa"
    assert gradient_rollout(sdpa, images).maps.shape == (2, 1, 4, 4)
    assert attributions(sdpa, images, method="gradcam").maps.shape == (2, 1, 32, 32)


def test_hf_deit_distilled_capture() -> None:
    from transformers import DeiTConfig, DeiTForImageClassificationWithTeacher

    model = DeiTForImageClassificationWithTeacher(_hf_config(DeiTConfig, attn_implementation="eager")).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        own = model(pixel_values=images, output_attentions=True).attentions
    maps = attention_maps(model, images)
    assert maps.layout.num_prefix_tokens == 2 and maps.layout.dist_index == 1
    np.testing.assert_allclose(maps.weights, torch.stack(own).numpy(), atol=1e-6)
    assert attention_rollout(model, images, source="both").maps.shape == (2, 2, 4, 4)
