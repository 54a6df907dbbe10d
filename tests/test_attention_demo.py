"""On every model of the demo zoo (v2, 64 px), the map puts more mass per pixel on the shape than on
the background in most images: rollout and gradient rollout for the ViTs, Grad-CAM at the 4x4 last
stage for the ResNets. The same architectures untrained do not, which shows the test can fail."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vitprobe.attention import attention_rollout, attributions, gradient_rollout
from vitprobe.data.shapes import render_shapes, subset_indices
from vitprobe.models import as_loaded, load_model
from vitprobe.models.demo import RESOLUTION, build_architecture


def _object_to_background(result, masks: np.ndarray) -> np.ndarray:
    """Per image: map mass per object pixel / map mass per background pixel (NaN for an empty map)."""
    maps = np.clip(result.upsampled(tuple(masks.shape[-2:]))[:, 0], 0, None)
    on_object = (maps * masks).sum((1, 2)) / masks.sum((1, 2))
    on_background = (maps * (1 - masks)).sum((1, 2)) / (1 - masks).sum((1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return on_object / on_background


@pytest.fixture(scope="module")
def shapes():
    rendered = render_shapes(subset_indices(48, seed=0), size=RESOLUTION, split="test")
    return rendered.images, rendered.masks.numpy().astype(np.float64)


def _normalised(model, images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(model.data_config["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(model.data_config["std"]).view(1, -1, 1, 1)
    return (images - mean) / std


def _map(architecture: str, model, images: torch.Tensor):
    if architecture == "vit":
        return attention_rollout(model, images)
    return attributions(model, images, method="gradcam")


@pytest.mark.parametrize("name", ["vit", "vit-sam", "resnet", "resnet-sam"])
def test_the_map_falls_on_the_object(shapes, name) -> None:
    images, masks = shapes
    model = load_model(f"demo:{name}")
    architecture = name.split("-")[0]
    normalised = _normalised(model, images)
    ratio = _object_to_background(_map(architecture, model, normalised), masks)
    assert np.nanmedian(ratio) > 1.2 and (ratio > 1.1).mean() > 0.6, (np.nanmedian(ratio), (ratio > 1.1).mean())
    if architecture == "vit":
        assert np.median(_object_to_background(gradient_rollout(model, normalised), masks)) > 1.2

    torch.manual_seed(0)
    untrained = as_loaded(build_architecture(architecture).eval())
    control = _object_to_background(_map(architecture, untrained, normalised), masks)
    assert np.nanmedian(control) < 1.1 and (control > 1.1).mean() < 0.5
