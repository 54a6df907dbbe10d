"""The rectangular grid of a landscape and its one indexing convention.

``alphas`` are the coefficients of the first direction, ``betas`` of the second. Every
surface is an array of shape ``[len(betas), len(alphas)]``: **rows are beta, columns are
alpha**, as ``np.meshgrid(alphas, betas)`` and matplotlib's ``contour(alphas, betas, Z)``
expect. Point number ``k`` is row-major: ``k = row * len(alphas) + column``. A 1-D slice
has one row, ``betas == [0.0]``.

Coordinates are ``np.linspace(low, high, n)``, with values within 1e-12 of the span of zero
snapped to exactly 0. When the span contains 0 but no grid point falls on it (an even count
on a symmetric span), 0 is inserted, so the unperturbed model is always on the surface.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from vitprobe.errors import UserError

GridLike = int | tuple[int] | tuple[int, int]
MAX_POINTS = 1_000_000
SpanLike = float | Sequence[float]  # a radius, or (low, high); checked by parse_span


def parse_grid(grid: GridLike) -> tuple[int, int | None]:
    """(alpha count, beta count or None for 1-D) from ``51``, ``(51,)`` or ``(51, 41)``."""
    counts = (grid,) if isinstance(grid, int) else tuple(int(c) for c in grid)
    if len(counts) not in (1, 2) or any(c < 2 for c in counts):
        raise UserError(f"a grid is one or two counts of at least 2 points, got {grid!r}")
    points = counts[0] * (counts[1] if len(counts) == 2 else 1)
    if points > MAX_POINTS:
        raise UserError(f"a {grid} grid has {points:,} points; at most {MAX_POINTS:,} are computed "
                        "(each is a pass over the images)")
    return counts[0], (counts[1] if len(counts) == 2 else None)


def parse_span(span: SpanLike) -> tuple[float, float]:
    """(low, high) from ``(-1, 1)``, or a radius ``1`` meaning (-1, 1)."""
    try:
        parts = [float(span)] if isinstance(span, (int, float)) else [float(p) for p in span]
    except (TypeError, ValueError):
        raise UserError(f"a span is (low, high) or a radius, got {span!r}") from None
    if len(parts) == 1:
        parts = [-abs(parts[0]), abs(parts[0])]
    if len(parts) != 2 or not parts[0] < parts[1] or not all(np.isfinite(parts)):
        raise UserError(f"a span is (low, high) with low < high, got {span!r}")
    return parts[0], parts[1]


def coordinates(count: int, span: tuple[float, float]) -> np.ndarray:
    """``count`` evenly spaced values over ``span``, with an exact 0 whenever 0 is inside."""
    low, high = span
    values = np.linspace(low, high, count)
    values[np.abs(values) < 1e-12 * (high - low)] = 0.0
    if low < 0 < high and not (values == 0).any():
        values = np.sort(np.append(values, 0.0))
    return values


@dataclass(frozen=True)
class Grid:
    """The alpha and beta coordinates of a landscape (rows beta, columns alpha)."""

    alphas: np.ndarray
    betas: np.ndarray
    two_d: bool

    @classmethod
    def make(cls, grid: GridLike, span: SpanLike = (-1, 1), beta_span: SpanLike | None = None) -> Grid:
        n_alpha, n_beta = parse_grid(grid)
        alphas = coordinates(n_alpha, parse_span(span))
        if n_beta is None:
            return cls(alphas, np.zeros(1), two_d=False)
        return cls(alphas, coordinates(n_beta, parse_span(span if beta_span is None else beta_span)), True)

    @property
    def shape(self) -> tuple[int, int]:
        """(len(betas), len(alphas)): the shape of every surface."""
        return len(self.betas), len(self.alphas)

    @property
    def size(self) -> int:
        return len(self.betas) * len(self.alphas)

    def point(self, k: int) -> tuple[int, int, float, float]:
        """(row, column, alpha, beta) of point ``k`` (row-major)."""
        row, column = divmod(k, len(self.alphas))
        return row, column, float(self.alphas[column]), float(self.betas[row])

    def describe(self) -> str:
        def axis(values: np.ndarray) -> str:
            return f"{len(values)} in [{values[0]:g}, {values[-1]:g}]"

        return f"alpha {axis(self.alphas)}" + (f", beta {axis(self.betas)}" if self.two_d else "")
