"""Theoretical receptive fields against the closed-form recurrence and hand calculations."""

from __future__ import annotations

import math
from collections import OrderedDict

import pytest
import timm
import torch
from torch import nn

from vitprobe.errors import UserError
from vitprobe.receptive_field import theoretical_receptive_field
from vitprobe.receptive_field.theoretical import layer_fields


def field_of(model, layer: str):
    return theoretical_receptive_field(model, layer=layer).fields[layer]


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_stack_of_3x3_convolutions(n):
    model = nn.Sequential(*[nn.Conv2d(3 if i == 0 else 4, 4, 3, padding=1) for i in range(n)])
    field = field_of(model, str(n - 1))
    assert field.size == (2 * n + 1, 2 * n + 1)
    assert field.jump == (1, 1)
    assert field.start == (0, 0)  # 'same' padding keeps unit 0 centred on pixel 0
    assert field_of(model, "").size == (2 * n + 1, 2 * n + 1)


# (kind, kernel, stride, dilation, padding): convolutions and pooling, strided and dilated
STACK = [
    ("conv", 3, 2, 1, 0),
    ("conv", 3, 1, 2, 2),
    ("max", 2, 2, 1, 0),
    ("conv", 5, 1, 3, 1),
    ("avg", 3, 1, 1, 1),
    ("conv", 1, 2, 1, 0),
    ("max", 3, 1, 2, 1),
]


def build_stack() -> nn.Sequential:
    layers = OrderedDict()
    for index, (kind, k, s, d, p) in enumerate(STACK):
        if kind == "conv":
            layers[f"{kind}{index}"] = nn.Conv2d(2, 2, k, stride=s, dilation=d, padding=p)
        elif kind == "max":
            layers[f"{kind}{index}"] = nn.MaxPool2d(k, stride=s, dilation=d, padding=p)
        else:
            layers[f"{kind}{index}"] = nn.AvgPool2d(k, stride=s, padding=p)
        layers[f"act{index}"] = nn.ReLU()
    return nn.Sequential(layers)


def test_strided_and_dilated_stack_follows_the_recurrence():
    model = build_stack()
    r, j, first = 1, 1, 0  # input: each unit sees itself, units 1 pixel apart
    for index, (kind, k, s, d, p) in enumerate(STACK):
        r, j, first = r + (k - 1) * d * j, j * s, first - p * j
        for name in (f"{kind}{index}", f"act{index}"):
            field = field_of(model, name)
            assert field.size == (r, r), name
            assert field.jump == (j, j), name
            assert field.rows.first == first, name
            assert field.start == (first + (r - 1) / 2,) * 2, name
    # by hand: 1 -> 3 (j 2) -> 11 (j 2) -> 13 (j 4) -> 61 (j 4) -> 69 (j 4) -> 69 (j 8) -> 101
    assert (r, j) == (101, 8)


def test_non_square_kernels_and_strides():
    model = nn.Sequential(nn.Conv2d(1, 1, (3, 7), stride=(1, 2), padding=(1, 3)),
                          nn.Conv2d(1, 1, (5, 3), dilation=(1, 2)))
    field = field_of(model, "1")
    assert field.size == (3 + 4, 7 + 2 * 2 * 2)
    assert field.jump == (1, 2)


class TwoBranches(nn.Module):
    """A residual-style sum whose second branch sees further than the first."""

    def __init__(self) -> None:
        super().__init__()
        self.narrow = nn.Conv2d(1, 1, 3, padding=1)
        self.wide = nn.Sequential(nn.Conv2d(1, 1, 5, padding=2), nn.Conv2d(1, 1, 3, padding=1))

    def forward(self, x):
        return torch.relu(self.narrow(x)) + self.wide(x) * 2.0


def test_parallel_branches_take_the_largest_field():
    model = TwoBranches()
    assert field_of(model, "narrow").size == (3, 3)
    assert field_of(model, "wide").size == (7, 7)
    assert field_of(model, "").size == (7, 7)


# Hand calculation, rows of (layer, size, jump) for torchvision-style ResNets (timm default):
# stem conv 7x7/2 pad 3 -> 7 (j 2); max-pool 3x3/2 -> 7 + 2*2 = 11 (j 4).
# resnet18, BasicBlock (two 3x3 per block), blocks [2, 2, 2, 2]:
#   layer1: 4 convs at j 4:              11 + 4*2*4              = 43,  j 4
#   layer2: 3x3/2 at j 4, 3 convs at j 8: 43 + 2*4 + 3*2*8        = 99,  j 8
#   layer3: 3x3/2 at j 8, 3 at j 16:      99 + 2*8 + 3*2*16       = 211, j 16
#   layer4: 3x3/2 at j 16, 3 at j 32:     211 + 2*16 + 3*2*32     = 435, j 32
# resnet50, Bottleneck (1x1, 3x3 carrying the stride, 1x1), blocks [3, 4, 6, 3]:
#   layer1: 3 convs at j 4:               11 + 3*2*4              = 35,  j 4
#   layer2: 3x3/2 at j 4, 3 at j 8:       35 + 2*4 + 3*2*8        = 91,  j 8
#   layer3: 3x3/2 at j 8, 5 at j 16:      91 + 2*8 + 5*2*16       = 267, j 16
#   layer4: 3x3/2 at j 16, 2 at j 32:     267 + 2*16 + 2*2*32     = 427, j 32
# The 1x1/2 shortcut convolutions see less than the main branch: the sum keeps the main field.
HAND = {
    "resnet18": [("layer1", 43, 4), ("layer2", 99, 8), ("layer3", 211, 16), ("layer4", 435, 32)],
    "resnet50": [("layer1", 35, 4), ("layer2", 91, 8), ("layer3", 267, 16), ("layer4", 427, 32)],
    # deep stem: three 3x3 convs (the first /2) -> 3, 7, 11 (j 2); max-pool -> 15 (j 4), so +4;
    # its shortcut (2x2/2 average pool, then 1x1) is off-centre by half a jump but still inside
    "resnet50d": [("layer1", 39, 4), ("layer2", 95, 8), ("layer3", 271, 16), ("layer4", 431, 32)],
}


@pytest.mark.parametrize("name", sorted(HAND))
def test_timm_resnet_stages_match_hand_calculation(name):
    model = timm.create_model(name, pretrained=False)
    fields = layer_fields(model)
    for layer, size, jump in HAND[name]:
        assert fields[layer].size == (size, size), layer
        assert fields[layer].jump == (jump, jump), layer
        assert fields[layer].start == (0.0, 0.0), layer
    stem = 15 if name == "resnet50d" else 11
    assert fields["maxpool"].size == (stem, stem)
    # inside a block: the first conv of resnet18 is 3x3 at j 4, that of a Bottleneck is 1x1
    first_conv = stem + 8 if name == "resnet18" else stem
    assert fields["layer1.0.conv1"].size == (first_conv, first_conv)
    # global average pooling makes the head see everything
    assert fields["global_pool"].is_global and fields[""].is_global
    assert math.isinf(field_of(model, "fc").size[0])


def test_squeeze_excitation_gating_is_global():
    model = timm.create_model("seresnet18", pretrained=False)
    assert field_of(model, "layer1.0.conv2").size == (27, 27)
    assert field_of(model, "layer1").is_global  # the SE mean spans the map


def test_unknown_spatial_operation_is_refused():
    model = nn.Sequential(nn.Conv2d(1, 1, 3), nn.Upsample(scale_factor=2), nn.Conv2d(1, 1, 3))
    with pytest.raises(UserError, match="Upsample"):
        field_of(model, "2")


def test_missing_layer_and_vit_are_user_errors(tiny_vit):
    model = nn.Sequential(nn.Conv2d(1, 1, 3))
    with pytest.raises(UserError, match="no layer 'nope'"):
        field_of(model, "nope")
    with pytest.raises(UserError, match="convolutional"):
        field_of(tiny_vit, "blocks.0")
