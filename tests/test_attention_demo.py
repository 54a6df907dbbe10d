"""On the trained demo ViT, rollout puts more mass per pixel on the shape than on the background;
the same architecture untrained does not."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vitprobe.attention import attention_rollout, gradient_rollout
from vitprobe.data.shapes import render_shapes, subset_indices
from vitprobe.models import load_model
from vitprobe.models.demo import build_architecture


def _object_to_background(result, masks: np.ndarray) -> np.ndarray:
    """Per image: map mass per object pixel / map mass per background pixel."""
    maps = np.clip(result.upsampled(tuple(masks.shape[-2:]))[:, 0], 0, None)
    on_object = (maps * masks).sum((1, 2)) / masks.sum((1, 2))
    on_background = (maps * (1 - masks)).sum((1, 2)) / (1 - masks).sum((1, 2))
    return on_object / on_background


@pytest.fixture(scope="module")
def shapes():
    rendered = render_shapes(subset_indices(48, seed=0), size=32, split="test")
    return rendered.images, rendered.masks.numpy().astype(np.float64)


def test_rollout_mass_falls_on_the_object(shapes) -> None:
    images, masks = shapes
    model = load_model("demo:vit")
    mean = torch.tensor(model.data_config["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(model.data_config["std"]).view(1, -1, 1, 1)
    normalised = (images - mean) / std
    ratio = _object_to_background(attention_rollout(model, normalised), masks)
    assert np.median(ratio) > 1.5
    assert (ratio > 1).mean() > 0.9
    assert np.median(_object_to_background(gradient_rollout(model, normalised), masks)) > 1.5

    torch.manual_seed(0)
    untrained = build_architecture("vit").eval()
    control = _object_to_background(attention_rollout(untrained, normalised), masks)
    assert abs(np.median(control) - 1) < 0.1
