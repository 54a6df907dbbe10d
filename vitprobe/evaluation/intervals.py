"""Confidence intervals: Wilson score intervals for proportions, percentile bootstrap otherwise."""

from __future__ import annotations

import math
from collections.abc import Callable
from statistics import NormalDist

import numpy as np


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (Wilson 1927).

    With p = successes / n and z the two-sided normal quantile:
    (p + z²/2n ± z sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n). Unlike the normal interval it
    stays inside [0, 1] and is sensible at p = 0 or 1.
    """
    if n <= 0:
        raise ValueError("the Wilson interval needs at least one trial")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must lie in [0, {n}], got {successes}")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_interval(
    statistic: Callable[[np.ndarray], np.ndarray],
    n: int,
    samples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval over ``n`` items (Efron & Tibshirani 1993).

    ``statistic`` maps an index array of shape (samples, n) — each row one resample with
    replacement — to the statistic of each row, shape (samples,). Resamples are drawn
    from ``numpy.random.default_rng(seed)``, so the interval is reproducible.
    """
    if samples < 1:
        raise ValueError("the bootstrap needs at least one resample")
    indices = np.random.default_rng(seed).integers(0, n, size=(samples, n))
    values = np.asarray(statistic(indices), dtype=np.float64)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(values, [alpha, 1 - alpha])
    return float(low), float(high)
