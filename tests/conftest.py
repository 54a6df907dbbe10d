"""Shared fixtures: tiny *real* timm models and data, small enough for dense Hessians."""

from __future__ import annotations

import os

import pytest
import torch
from timm.models.resnet import BasicBlock, ResNet
from timm.models.vision_transformer import VisionTransformer

from vitprobe.progress import set_quiet

set_quiet(True)
torch.set_num_threads(int(os.environ.get("VITPROBE_TEST_THREADS", "2")))


@pytest.fixture(autouse=True)
def _seeded() -> None:
    torch.manual_seed(0)


@pytest.fixture
def tiny_vit() -> VisionTransformer:
    """A timm ViT: 16x16 input, 4x4 patches (4x4 grid + class token), 2 blocks, 3 classes."""
    model = VisionTransformer(img_size=16, patch_size=4, embed_dim=8, depth=2, num_heads=2,
                              mlp_ratio=2.0, num_classes=3)
    return model.eval()


@pytest.fixture
def tiny_resnet() -> ResNet:
    """A timm ResNet with BatchNorm (running statistics made non-trivial), 3 classes."""
    model = ResNet(BasicBlock, [1, 1, 1, 1], channels=(4, 4, 4, 4), stem_width=4, num_classes=3)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, 3, 16, 16))
    return model.eval()


@pytest.fixture
def tiny_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Three batches of unequal size (5, 5, 3) of 16x16 RGB images with 3 classes."""
    generator = torch.Generator().manual_seed(1)
    sizes = (5, 5, 3)
    return [(torch.randn(n, 3, 16, 16, generator=generator),
             torch.randint(0, 3, (n,), generator=generator)) for n in sizes]
