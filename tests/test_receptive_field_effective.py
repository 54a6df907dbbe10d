"""Effective receptive fields: exact supports, the ViT token layout, RepLKNet's script as peer."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

import vitprobe
from vitprobe.data.batches import Batches
from vitprobe.errors import UserError
from vitprobe.receptive_field import effective_receptive_field


def support_box(data: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.nonzero(data)
    return int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())


def conv_stack(specs, channels: int = 3) -> nn.Sequential:
    """Convolutions / average pools with tanh between: generic weights, no exact zeros."""
    layers = OrderedDict()
    for index, (kind, k, s, d, p) in enumerate(specs):
        if kind == "conv":
            layers[f"conv{index}"] = nn.Conv2d(channels, channels, k, stride=s, dilation=d,
                                               padding=p)
        else:
            layers[f"avg{index}"] = nn.AvgPool2d(k, stride=s, padding=p)
        layers[f"tanh{index}"] = nn.Tanh()
    return nn.Sequential(layers).eval()


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_stack_of_3x3_convolutions_has_a_2n_plus_1_support(n):
    model = conv_stack([("conv", 3, 1, 1, 1)] * n)
    images = torch.randn(2, 3, 24, 24)
    result = effective_receptive_field(model, images, gradient="abs")
    assert result.layers == [""]
    support = result.raw[0] > 0
    # exactly the (2n + 1)^2 square around the centre pixel (12, 12), every pixel in it
    assert support_box(support) == (12 - n, 12 + n, 12 - n, 12 + n)
    assert support.sum() == (2 * n + 1) ** 2
    assert result.theoretical[0].size == (2 * n + 1, 2 * n + 1)
    assert result.centre_units == [(12, 12)] and result.score_centres == [(12, 12)]
    frame = result.to_frame()
    size = frame.query("metric == 'theoretical_size'")["value"]
    assert list(size) == [2 * n + 1]
    # with abs gradients the whole mass lies in the support: the 0.99 square is at most 2n + 1
    side = frame.query("metric == 'square_side' and threshold == 0.99")["value"].item()
    assert side <= 2 * n + 1


def test_strided_dilated_support_matches_theoretical_field():
    specs = [("conv", 3, 2, 1, 0), ("conv", 3, 1, 2, 2), ("avg", 2, 2, 1, 0), ("conv", 5, 1, 3, 1)]
    model = conv_stack(specs)
    # recurrence by hand: size 1 -> 3 (j 2) -> 11 (j 2) -> 13 (j 4) -> 61 (j 4);
    # first pixel of unit 0: 0 -> 0 -> -4 -> -4 -> -8; its centre: -8 + 30 = 22
    result = effective_receptive_field(model, torch.randn(2, 3, 96, 96), layer="conv3",
                                       gradient="abs")
    assert result.output_grids == [(13, 13)] and result.centre_units == [(6, 6)]
    field = result.theoretical[0]
    assert field.size == (61, 61) and field.jump == (4, 4) and field.start == (22, 22)
    centre = 22 + 6 * 4
    assert result.score_centres == [(centre, centre)]
    # the dilations leave holes, but the support spans exactly the theoretical window
    assert support_box(result.raw[0] > 0) == (centre - 30, centre + 30, centre - 30, centre + 30)


def replknet_input_grad(model: nn.Module, samples: torch.Tensor) -> np.ndarray:
    """RepLKNet's erf/visualize_erf.py ``get_input_grad``, transcribed as the peer."""
    outputs = model(samples)
    out_size = outputs.size()
    central_point = torch.nn.functional.relu(
        outputs[:, :, out_size[2] // 2, out_size[3] // 2]).sum()
    grad = torch.autograd.grad(central_point, samples)
    grad = grad[0]
    grad = torch.nn.functional.relu(grad)
    aggregated = grad.sum((0, 1))
    return aggregated.cpu().numpy()


def test_matches_replknet_script_on_a_resnet_stage(tiny_resnet):
    images = torch.randn(6, 3, 32, 32)
    result = effective_receptive_field(
        tiny_resnet, [(images[:4], torch.zeros(4)), (images[4:], torch.zeros(2))], layer="layer2")
    truncated = nn.Sequential(tiny_resnet.conv1, tiny_resnet.bn1, tiny_resnet.act1,
                              tiny_resnet.maxpool, tiny_resnet.layer1, tiny_resnet.layer2)
    # the script: batch size 1, an AverageMeter over images
    peer = np.mean([replknet_input_grad(truncated, image[None].clone().requires_grad_(True))
                    for image in images], axis=0)
    assert result.images == 6
    np.testing.assert_allclose(result.raw[0], peer, rtol=1e-5, atol=1e-9)
    scaled = np.log10(peer + 1)
    np.testing.assert_allclose(result.scaled[0], scaled / scaled.max(), rtol=1e-5)


def test_default_layers_and_scales(tiny_resnet):
    images = torch.randn(3, 3, 32, 32)
    result = effective_receptive_field(tiny_resnet, images, scale="power", exponent=0.25)
    assert result.layers == ["layer1", "layer2", "layer3", "layer4"]
    for raw, scaled in zip(result.raw, result.scaled):
        np.testing.assert_allclose(scaled, raw ** 0.25 / (raw ** 0.25).max())
    # the fields grow with depth, and every layer has its theoretical size
    sizes = [field.size[0] for field in result.theoretical]
    assert sizes == sorted(sizes) and len(set(sizes)) == 4


def test_scores_centre_on_the_units_field(tiny_resnet):
    """At 32 pixels layer4 of a ResNet has one unit, whose field is centred on pixel (0, 0)
    (every padding is (k - 1) / 2): its scores are measured there, not at the map's centre."""
    images = torch.randn(3, 3, 32, 32)
    field = effective_receptive_field(tiny_resnet, images, layer=["layer3", "layer4"])
    assert field.output_grids == [(2, 2), (1, 1)] and field.centre_units == [(1, 1), (0, 0)]
    assert field.score_centres == [(16, 16), (0, 0)]  # unit 1 of layer3: 1 x 16 pixels
    mapped = effective_receptive_field(tiny_resnet, images, layer=["layer3", "layer4"],
                                       centre="map")
    assert mapped.score_centres == [(16, 16), (16, 16)]
    np.testing.assert_allclose(mapped.raw, field.raw)
    frame = field.to_frame().query("layer == 'layer4'").set_index("metric")["value"]
    assert (frame["centre_row"], frame["centre_col"]) == (0, 0)
    # around (0, 0) the mean distance is the map's mass-weighted distance from that corner
    rows, cols = np.indices((32, 32))
    data = field.scaled[1]
    expected = (data * np.hypot(rows, cols)).sum() / data.sum()
    assert frame["mean_distance"] == pytest.approx(expected)


def centre_token_peer(model: nn.Module, images: torch.Tensor, block: int, token: int) -> np.ndarray:
    x = images.clone().requires_grad_(True)
    captured = {}
    handle = model.blocks[block].register_forward_hook(lambda m, i, o: captured.update(out=o))
    model(x)
    handle.remove()
    objective = torch.relu(captured["out"][:, token, :]).sum()
    (grad,) = torch.autograd.grad(objective, x)
    return torch.relu(grad).sum(1).mean(0).numpy()


@pytest.mark.parametrize("prefix", ["cls", "cls+2 registers", "none"])
def test_vit_centre_token_follows_the_token_layout(prefix):
    kwargs = {"cls": {}, "cls+2 registers": {"reg_tokens": 2},
              "none": {"class_token": False, "global_pool": "avg"}}[prefix]
    # 20x20 input, 4x4 patches: an odd 5x5 grid whose centre patch covers pixels 8..11
    model = VisionTransformer(img_size=20, patch_size=4, embed_dim=8, depth=2, num_heads=2,
                              mlp_ratio=2.0, num_classes=3, **kwargs).eval()
    images = torch.randn(3, 3, 20, 20)
    patch = effective_receptive_field(model, images, layer="patch_embed", gradient="abs")
    assert support_box(patch.raw[0] > 0) == (8, 11, 8, 11)
    blocks = effective_receptive_field(model, images)
    assert blocks.layers == ["blocks.0", "blocks.1"]
    token = model.num_prefix_tokens + 2 * 5 + 2
    np.testing.assert_allclose(blocks.raw[1], centre_token_peer(model, images, 1, token),
                               rtol=1e-5, atol=1e-10)
    assert blocks.centre_units == [(2, 2), (2, 2)] and blocks.theoretical == [None, None]
    # the centre patch spans pixels 8..11: its middle, 9.5, rounds to pixel 10
    assert blocks.score_centres == [(10, 10), (10, 10)]


def test_vit_centre_token_sees_the_whole_input_after_one_block(tiny_vit):
    images = torch.randn(4, 3, 16, 16)
    result = effective_receptive_field(tiny_vit, images, layer=["patch_embed", "blocks.0"],
                                       gradient="abs")
    # even 4x4 grid: the centre is patch (2, 2), the lower-right of the middle four
    assert result.centre_units == [(2, 2), (2, 2)]
    assert support_box(result.raw[0] > 0) == (8, 11, 8, 11)
    assert (result.raw[0] > 0).sum() == 16
    assert (result.raw[1] > 0).all()  # attention is global after the first block


def test_vit_at_another_input_size_runs_on_a_resized_copy(tiny_vit):
    before = tiny_vit.pos_embed.detach().clone()
    result = effective_receptive_field(tiny_vit, torch.randn(2, 3, 24, 24), layer="blocks.1")
    assert result.input_size == (24, 24) and result.output_grids == [(6, 6)]
    assert result.raw.shape == (1, 24, 24)
    assert torch.equal(tiny_vit.pos_embed, before)


def test_data_forms_agree(tiny_resnet):
    images = torch.randn(5, 3, 32, 32)
    labels = torch.zeros(5, dtype=torch.long)
    forms = [images, (images, labels), [(images[:2], labels[:2]), (images[2:], labels[2:])],
             Batches([(images, labels)])]
    maps = [vitprobe.effective_receptive_field(tiny_resnet, form, layer="layer3").raw
            for form in forms]
    for other in maps[1:]:
        np.testing.assert_allclose(other, maps[0], rtol=1e-6, atol=1e-12)


def test_bad_options_are_user_errors(tiny_resnet):
    images = torch.randn(1, 3, 32, 32)
    with pytest.raises(UserError, match="gradient"):
        effective_receptive_field(tiny_resnet, images, gradient="square")
    with pytest.raises(UserError, match="scale"):
        effective_receptive_field(tiny_resnet, images, scale="sqrt")
    with pytest.raises(UserError, match="no layer"):
        effective_receptive_field(tiny_resnet, images, layer="layer9")
    with pytest.raises(UserError, match="shape"):
        effective_receptive_field(tiny_resnet, images, layer="fc")


def test_hugging_face_vit_blocks_and_patch_embedding():
    from transformers import ViTConfig, ViTForImageClassification

    from vitprobe.models.loaded import LoadedModel

    config = ViTConfig(image_size=16, patch_size=4, hidden_size=8, num_hidden_layers=2,
                       num_attention_heads=2, intermediate_size=16, num_labels=3)
    module = ViTForImageClassification(config).eval()
    loaded = LoadedModel(module=module, label="hf", spec="hf", family="vit",
                         data_config={"input_size": (3, 16, 16)}, num_prefix_tokens=1,
                         patch_size=(4, 4))
    images = torch.randn(3, 3, 16, 16)
    blocks = effective_receptive_field(loaded, images, gradient="abs")
    assert len(blocks.layers) == 2 and blocks.layers[0].endswith(".0")
    assert (blocks.raw > 0).all()
    patch_layer = next(name for name, m in module.named_modules()
                       if name.endswith("patch_embeddings"))
    patch = effective_receptive_field(loaded, images, layer=patch_layer, gradient="abs")
    assert support_box(patch.raw[0] > 0) == (8, 11, 8, 11)
