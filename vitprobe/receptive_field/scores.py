"""How much of a contribution map sits near its centre: the scores of an effective receptive field.

Every score reads a non-negative map ``M`` of shape (H, W) around a centre pixel: by default
``(H // 2, W // 2)``, the convention of RepLKNet's ``analyze_erf.py`` (Ding et al. 2022; for an
even side it is the lower/right of the two middle pixels), or any pixel passed as ``centre``
(the effective-field code passes the pixel at the centre of the measured unit's field).
``S = M.sum()`` is the total mass, and a threshold ``t`` in (0, 1) asks for *more than*
``t * S`` (strictly, as the script does).

- :func:`centred_square`: the smallest centred square of side ``2i + 1`` whose sum exceeds
  ``t * S``, as its side in pixels and its area ratio ``(2i + 1)**2 / (H * W)``. This is
  RepLKNet's *high-contribution area ratio*. Where both are defined the two agree; two
  deliberate differences from the script's ``get_rectangle``: the search starts at ``i = 0``
  (a 1x1 square; the script starts at 3x3), and it goes on past the largest square that fits
  (where the script stops, one short of the whole map for odd sides, and returns ``None``):
  a square reaching past the map's edge is clipped to it, its area ratio counts only the
  pixels inside, and its side is still ``2i + 1`` (so on an even map the whole map is reached
  at side ``H + 1``). A score therefore always exists.
- :func:`top_pixels_ratio`: the fewest pixels (taken largest first) whose sum exceeds ``t * S``,
  as a fraction of all ``H * W`` pixels: the area ratio without the centred-square shape.
- :func:`mass_radius`: the smallest Euclidean distance ``r`` (pixels, between pixel centres)
  such that the pixels within ``r`` of the centre hold more than ``t * S``.
- :func:`mean_distance`: the mass-weighted mean Euclidean distance from the centre,
  ``sum(M * d) / S``: the receptive-field counterpart of the mean attention distance
  (Dosovitskiy et al. 2020, Fig. 7), which weights pixel distances by attention the same way.
"""

from __future__ import annotations

import numpy as np

DEFAULT_THRESHOLDS: tuple[float, ...] = (0.2, 0.3, 0.5, 0.99)


Pixel = tuple[int, int]


def _checked(contribution: np.ndarray, threshold: float | None = None) -> tuple[np.ndarray, float]:
    data = np.asarray(contribution, dtype=np.float64)
    if data.ndim != 2:
        raise ValueError(f"a contribution map is 2-D (H, W), got shape {data.shape}")
    if (data < 0).any() or not np.isfinite(data).all():
        raise ValueError("a contribution map must be finite and non-negative")
    if threshold is not None and not 0.0 < threshold < 1.0:
        raise ValueError(f"a mass threshold lies in (0, 1), got {threshold}")
    total = float(data.sum())
    if total <= 0.0:
        raise ValueError("the contribution map is all zeros: there is no mass to locate")
    return data, total


def map_centre(shape: tuple[int, int]) -> Pixel:
    """The centre pixel (row, column) of a map: ``(H // 2, W // 2)``."""
    return shape[0] // 2, shape[1] // 2


def _centre(shape: tuple[int, int], centre: Pixel | None) -> Pixel:
    if centre is None:
        return map_centre(shape)
    if not (0 <= centre[0] < shape[0] and 0 <= centre[1] < shape[1]):
        raise ValueError(f"centre {centre} lies outside the {shape[0]}x{shape[1]} map")
    return int(centre[0]), int(centre[1])


def square_masses(contribution: np.ndarray,
                  centre: Pixel | None = None) -> tuple[np.ndarray, np.ndarray]:
    """For ``i = 0, 1, ...`` until the square covers the map: the sum of the centred
    ``(2i + 1)``-square clipped to the map, and the number of map pixels it covers."""
    data, _ = _checked(contribution)
    h, w = data.shape
    cy, cx = _centre((h, w), centre)
    largest = max(cy, cx, h - 1 - cy, w - 1 - cx)
    padded = np.zeros((h + 1, w + 1))
    padded[1:, 1:] = data.cumsum(0).cumsum(1)
    i = np.arange(largest + 1)
    top, bottom = np.maximum(cy - i, 0), np.minimum(cy + i + 1, h)
    left, right = np.maximum(cx - i, 0), np.minimum(cx + i + 1, w)
    masses = (padded[bottom, right] - padded[top, right] - padded[bottom, left]
              + padded[top, left])
    return masses, (bottom - top) * (right - left)


def centred_square(contribution: np.ndarray, threshold: float,
                   centre: Pixel | None = None) -> tuple[float, float]:
    """(side in pixels, area ratio) of the smallest centred square holding more than
    ``threshold`` of the map's mass: RepLKNet's high-contribution area ratio (squares past the
    map's edge are clipped to it; see the module docstring)."""
    data, total = _checked(contribution, threshold)
    masses, areas = square_masses(data, centre)
    # the last square covers the whole map, whose mass exceeds any threshold below 1
    index = int(np.argmax(masses > threshold * total)) if (masses > threshold * total).any() \
        else len(masses) - 1
    return float(2 * index + 1), float(areas[index]) / data.size


def top_pixels_ratio(contribution: np.ndarray, threshold: float) -> float:
    """Fraction of the map's pixels needed, largest values first, to hold more than
    ``threshold`` of its mass."""
    data, total = _checked(contribution, threshold)
    cumulative = np.cumsum(np.sort(data, axis=None)[::-1])
    count = int(np.searchsorted(cumulative, threshold * total, side="right")) + 1
    return min(count, data.size) / data.size


def distances(shape: tuple[int, int], centre: Pixel | None = None) -> np.ndarray:
    """Euclidean distance in pixels of every pixel centre from the centre pixel."""
    cy, cx = _centre(shape, centre)
    rows = np.arange(shape[0])[:, None] - cy
    cols = np.arange(shape[1])[None, :] - cx
    return np.sqrt(rows * rows + cols * cols)


def mass_radius(contribution: np.ndarray, threshold: float, centre: Pixel | None = None) -> float:
    """The smallest distance from the centre within which the map holds more than
    ``threshold`` of its mass (pixels at exactly that distance included)."""
    data, total = _checked(contribution, threshold)
    radius = distances(data.shape, centre).ravel()
    order = np.argsort(radius, kind="stable")
    radius, cumulative = radius[order], np.cumsum(data.ravel()[order])
    # the mass within r counts every pixel at distance r: use the last index of each tie
    last_of_tie = np.r_[radius[1:] != radius[:-1], True]
    radius, cumulative = radius[last_of_tie], cumulative[last_of_tie]
    index = int(np.argmax(cumulative > threshold * total))
    return float(radius[index])


def mean_distance(contribution: np.ndarray, centre: Pixel | None = None) -> float:
    """Mass-weighted mean Euclidean distance (pixels) from the map's centre."""
    data, total = _checked(contribution)
    return float((data * distances(data.shape, centre)).sum() / total)
