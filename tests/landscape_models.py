"""Tiny timm models built deterministically, loadable as ``py:landscape_models:NAME`` specs in
the landscape tests (in-process and in torchrun / killed subprocesses)."""

from __future__ import annotations

import torch
from timm.models.resnet import BasicBlock, ResNet
from timm.models.vision_transformer import VisionTransformer

CFG = {"input_size": (3, 16, 16), "interpolation": "bilinear", "crop_pct": 1.0, "crop_mode": "center",
       "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25), "num_classes": 4}


def _vit(seed: int) -> VisionTransformer:
    torch.manual_seed(seed)
    model = VisionTransformer(img_size=16, patch_size=4, embed_dim=8, depth=2, num_heads=2,
                              mlp_ratio=2.0, num_classes=4, reg_tokens=1)
    model.pretrained_cfg = dict(CFG)
    return model.eval()


def tiny_vit() -> VisionTransformer:
    return _vit(0)


def tiny_vit_b() -> VisionTransformer:
    """The same architecture as ``tiny_vit`` with other weights: a second checkpoint."""
    return _vit(1)


def _resnet(seed: int) -> ResNet:
    torch.manual_seed(seed)
    model = ResNet(BasicBlock, [1, 1, 1, 1], channels=(4, 4, 4, 4), stem_width=4, num_classes=4)
    model.pretrained_cfg = dict(CFG)
    model.train()
    with torch.no_grad():  # non-trivial BatchNorm running statistics
        for _ in range(3):
            model(torch.randn(8, 3, 16, 16))
    return model.eval()


def tiny_resnet() -> ResNet:
    return _resnet(0)


def tiny_resnet_b() -> ResNet:
    return _resnet(1)


def tiny_data() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Three batches of unequal size (5, 5, 3) of 16x16 images with 4 classes, always the same."""
    generator = torch.Generator().manual_seed(1)
    return [(torch.randn(n, 3, 16, 16, generator=generator), torch.randint(0, 4, (n,), generator=generator))
            for n in (5, 5, 3)]
