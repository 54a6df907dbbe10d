"""Three tiny 4-class classifiers for the rerun and interruption tests, named a, b and c so
that their rows can be told apart. A model whose name is listed in ``VITPROBE_TEST_SLOW`` sleeps
in its forward pass on a batch of data (not on the one-image check that loading makes), so that
a test can stop a real run between two models."""

from __future__ import annotations

import os
import time

import torch
from torch import nn


class Tiny(nn.Module):
    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        torch.manual_seed(ord(name))
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(x) > 1 and self.name in os.environ.get("VITPROBE_TEST_SLOW", "").split(","):
            time.sleep(60)
        return self.head(self.conv(x).mean((2, 3)))


def a() -> nn.Module:
    return Tiny("a")


def b() -> nn.Module:
    return Tiny("b")


def c() -> nn.Module:
    return Tiny("c")
