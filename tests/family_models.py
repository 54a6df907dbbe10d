"""Small models of the families researchers bring, written as their papers' repositories and
tutorials write them (no timm): loaded in the tests through ``py:tests.family_models:NAME``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class EncoderViT(nn.Module):
    """A ViT on ``nn.TransformerEncoder``: conv patches, a class token, a learned position
    embedding, batch-first or sequence-first, pre- or post-norm."""

    def __init__(self, img_size: int = 32, patch_size: int = 8, dim: int = 16, depth: int = 2,
                 heads: int = 2, num_classes: int = 5, in_chans: int = 3, batch_first: bool = True,
                 norm_first: bool = False, activation: str = "relu") -> None:
        super().__init__()
        self.batch_first = batch_first
        self.patch = nn.Conv2d(in_chans, dim, patch_size, patch_size)
        self.cls = nn.Parameter(0.02 * torch.randn(1, 1, dim))
        self.pos_embedding = nn.Parameter(0.02 * torch.randn(1, (img_size // patch_size) ** 2 + 1, dim))
        layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.0, activation=activation,
                                           layer_norm_eps=1e-6, batch_first=batch_first,
                                           norm_first=norm_first)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(len(x), -1, -1), x], dim=1) + self.pos_embedding
        if not self.batch_first:
            x = x.transpose(0, 1)
        x = self.encoder(x)
        if not self.batch_first:
            x = x.transpose(0, 1)
        return self.head(self.norm(x[:, 0]))


class OptionABlock(nn.Module):
    """The CIFAR ResNet basic block of He et al. 2016 with the parameter-free option-A shortcut."""

    def __init__(self, inputs: int, outputs: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inputs, outputs, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(outputs)
        self.conv2 = nn.Conv2d(outputs, outputs, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(outputs)
        self.pad = (outputs - inputs) // 2 if stride != 1 or inputs != outputs else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        shortcut = x if self.pad is None else F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))
        return F.relu(out + shortcut)


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32-pixel CIFAR images: three stages, stride 4 in all, global pooling
    by ``F.avg_pool2d`` (no module)."""

    def __init__(self, n: int = 1, num_classes: int = 10, width: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        widths = (width, 2 * width, 4 * width)
        stages, inputs = [], width
        for index, outputs in enumerate(widths):
            blocks = [OptionABlock(inputs if i == 0 else outputs, outputs, 2 if i == 0 and index else 1)
                      for i in range(n)]
            stages.append(nn.Sequential(*blocks))
            inputs = outputs
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.avg_pool2d(out, out.size(3)).flatten(1)
        return self.linear(out)


class OneSequentialResNet(nn.Module):
    """A CIFAR ResNet whose blocks across all three resolutions sit in one ``nn.Sequential``
    (as some ResNet-110 repositories build it): stem, ``blocks``, pooling, classifier."""

    def __init__(self, n: int = 2, num_classes: int = 10, width: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        blocks, inputs = [], width
        for index, outputs in enumerate((width, 2 * width, 4 * width)):
            for i in range(n):
                blocks.append(OptionABlock(inputs, outputs, 2 if i == 0 and index else 1))
                inputs = outputs
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inputs, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.blocks(F.relu(self.bn1(self.conv1(x))))
        return self.fc(self.pool(out).flatten(1))


class MnistMLP(nn.Module):
    """A Lightning-tutorial MNIST MLP: no convolution, no size attribute, nothing to read off."""

    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, hidden), nn.ReLU(), nn.Linear(hidden, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class TutorialCNN(nn.Module):
    """captum's CIFAR tutorial network: one pooling module applied twice, functional ReLUs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


def mnist_cnn(num_classes: int = 10) -> nn.Module:
    """A 1-channel MNIST CNN as a plain ``nn.Sequential``."""
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(16 * 7 * 7, num_classes))


def encoder_vit(**kwargs) -> nn.Module:
    return EncoderViT(**kwargs)


def cifar_resnet(**kwargs) -> nn.Module:
    return CifarResNet(**kwargs)


def one_sequential_resnet(**kwargs) -> nn.Module:
    return OneSequentialResNet(**kwargs)


def mnist_mlp(**kwargs) -> nn.Module:
    return MnistMLP(**kwargs)


def tutorial_cnn() -> nn.Module:
    return TutorialCNN()


def lucidrains_vit(**kwargs) -> nn.Module:
    """vit-pytorch's ``ViT`` (a test dependency), small by default."""
    from vit_pytorch import ViT

    options = dict(image_size=32, patch_size=8, num_classes=5, dim=16, depth=2, heads=2, dim_head=8,
                   mlp_dim=32)
    return ViT(**{**options, **kwargs})


def broken_builder() -> nn.Module:
    raise RuntimeError("this builder is broken")
