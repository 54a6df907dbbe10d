"""``shapes``: an embedded, procedurally generated, labelled image dataset.

Each image holds one coloured shape (circle, square, triangle or cross) of random size,
rotation and position on a textured background. Image ``i`` of a split is drawn from a
generator seeded by ``(split, i)`` and rendered analytically (anti-aliased by
supersampling), so the same image comes out at any resolution, on any machine, with no
files. Labels are balanced: image ``i`` has class ``i % 4``. The object mask of every
image is returned too, so tests can ask where a map puts its mass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

CLASS_NAMES = ("circle", "square", "triangle", "cross")
SPLITS = {"train": 0, "test": 1}
SPLIT_SIZE = 100_000
SUPERSAMPLE = 3


@dataclass(frozen=True)
class ShapeImages:
    """Rendered images in [0, 1] (N, 3, H, W), labels (N,) and object masks (N, H, W)."""

    images: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor


def _inside(kind: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Membership of points (u, v), in units of the shape's radius, for each class."""
    if kind == 0:  # circle
        return u * u + v * v <= 1.0
    if kind == 1:  # square of half-side 0.8
        return np.maximum(np.abs(u), np.abs(v)) <= 0.8
    if kind == 2:  # equilateral triangle with circumradius 1, inradius 0.5
        inside = np.ones_like(u, dtype=bool)
        for angle in (math.pi / 2, math.pi / 2 + 2 * math.pi / 3, math.pi / 2 + 4 * math.pi / 3):
            inside &= -(u * math.cos(angle) + v * math.sin(angle)) <= 0.5
        return inside
    arm = 0.3  # cross: two bars of half-width 0.3 and half-length 0.95
    return ((np.abs(u) <= arm) & (np.abs(v) <= 0.95)) | ((np.abs(v) <= arm) & (np.abs(u) <= 0.95))


def _render_one(index: int, split: int, height: int, width: int) -> tuple[np.ndarray, int, np.ndarray]:
    rng = np.random.default_rng([split, index])
    label = index % len(CLASS_NAMES)
    unit = min(height, width)
    # background: a dull base colour, a soft gradient and a sinusoidal texture
    ys = (np.arange(height) + 0.5) / unit
    xs = (np.arange(width) + 0.5) / unit
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    base = rng.uniform(0.15, 0.55, size=3)
    gradient = rng.normal(0.0, 0.08, size=(2, 3))
    freq, phase, orient = rng.uniform(4.0, 10.0), rng.uniform(0, 2 * math.pi), rng.uniform(0, math.pi)
    texture = 0.06 * np.sin(2 * math.pi * freq * (xx * math.cos(orient) + yy * math.sin(orient)) + phase)
    background = (base[:, None, None] + gradient[0][:, None, None] * (xx - 0.5)
                  + gradient[1][:, None, None] * (yy - 0.5) + texture[None])
    # object: a bright colour, far enough from the background's
    colour = rng.uniform(0.0, 1.0, size=3)
    colour[rng.integers(3)] = rng.uniform(0.85, 1.0)
    if np.abs(colour - base).mean() < 0.3:
        colour = 1.0 - base
    radius = rng.uniform(0.18, 0.3)
    cy = rng.uniform(radius + 0.04, height / unit - radius - 0.04)
    cx = rng.uniform(radius + 0.04, width / unit - radius - 0.04)
    angle = rng.uniform(0, 2 * math.pi)
    # coverage by supersampling each pixel on a SUPERSAMPLE x SUPERSAMPLE grid
    offsets = (np.arange(SUPERSAMPLE) + 0.5) / SUPERSAMPLE - 0.5
    sy = ((np.arange(height)[:, None] + 0.5 + offsets[None, :]) / unit).reshape(-1)
    sx = ((np.arange(width)[:, None] + 0.5 + offsets[None, :]) / unit).reshape(-1)
    syy, sxx = np.meshgrid(sy - cy, sx - cx, indexing="ij")
    cos, sin = math.cos(angle), math.sin(angle)
    u = (cos * sxx + sin * syy) / radius
    v = (-sin * sxx + cos * syy) / radius
    coverage = _inside(label, u, v).reshape(height, SUPERSAMPLE, width, SUPERSAMPLE).mean(axis=(1, 3))
    image = background * (1 - coverage) + colour[:, None, None] * coverage
    image = image + rng.normal(0.0, 0.02, size=image.shape)
    return np.clip(image, 0.0, 1.0).astype(np.float32), label, coverage >= 0.5


def render_shapes(indices: list[int] | np.ndarray, size: int | tuple[int, int] = 32,
                  split: str = "test") -> ShapeImages:
    """Render images ``indices`` of ``split`` ('train' or 'test') at ``size`` (H, W) pixels."""
    if split not in SPLITS:
        raise ValueError(f"unknown shapes split {split!r}; choose from {sorted(SPLITS)}")
    height, width = (size, size) if isinstance(size, int) else size
    rendered = [_render_one(int(i), SPLITS[split], height, width) for i in indices]
    return ShapeImages(
        images=torch.from_numpy(np.stack([r[0] for r in rendered])),
        labels=torch.tensor([r[1] for r in rendered], dtype=torch.long),
        masks=torch.from_numpy(np.stack([r[2] for r in rendered])),
    )


def subset_indices(num_images: int, seed: int) -> np.ndarray:
    """A deterministic subset of ``num_images`` test-split indices, chosen by ``seed``."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(SPLIT_SIZE, size=num_images, replace=False))
