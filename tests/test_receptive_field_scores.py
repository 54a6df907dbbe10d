"""Scores of contribution maps against closed forms of a centred 2-D Gaussian, and against
RepLKNet's own loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import erf, erfinv
from scipy.stats import chi2, norm

from vitprobe.receptive_field import scores

THRESHOLDS = (0.2, 0.3, 0.5, 0.99)
SIGMA = 6.0


def pixel_gaussian(shape: tuple[int, int], sigma: float, centre=None) -> np.ndarray:
    """An isotropic Gaussian centred on the centre pixel (or ``centre``), integrated exactly over
    each pixel: separable, so the mass of any centred square is a product of two normal CDF
    differences."""
    cy, cx = centre or (shape[0] // 2, shape[1] // 2)

    def axis(n: int, c: int) -> np.ndarray:
        edges = np.arange(n + 1) - c - 0.5
        return np.diff(norm.cdf(edges / sigma))

    return np.outer(axis(shape[0], cy), axis(shape[1], cx))


@pytest.mark.parametrize("shape", [(101, 101), (81, 121), (100, 100)])
@pytest.mark.parametrize("t", THRESHOLDS)
def test_centred_square_matches_gaussian_closed_form(shape, t):
    data = pixel_gaussian(shape, SIGMA)
    h, w = shape
    cy, cx = h // 2, w // 2
    # whole-map mass of the pixel-integrated Gaussian, per axis
    axis_mass = [norm.cdf((n - 1 - c + 0.5) / SIGMA) - norm.cdf((-c - 0.5) / SIGMA)
                 for n, c in ((h, cy), (w, cx))]
    total = axis_mass[0] * axis_mass[1]
    # a centred square of half-width i holds erf((i + 1/2) / (sigma sqrt 2))**2: it exceeds
    # t * total once i + 1/2 > sigma sqrt(2) erfinv(sqrt(t * total))
    x = SIGMA * math.sqrt(2) * erfinv(math.sqrt(t * total))
    i = math.floor(x - 0.5) + 1
    assert erf((i + 0.5) / (SIGMA * math.sqrt(2))) ** 2 > t * total
    side, ratio = scores.centred_square(data, t)
    assert side == 2 * i + 1
    assert ratio == pytest.approx((2 * i + 1) ** 2 / (h * w))


@pytest.mark.parametrize("t", THRESHOLDS)
def test_scores_around_another_centre(t):
    """The same closed forms around an off-centre pixel, passed as the centre."""
    sigma, centre = 5.0, (30, 70)
    data = pixel_gaussian((101, 121), sigma, centre)
    i = math.floor(sigma * math.sqrt(2) * erfinv(math.sqrt(t)) - 0.5) + 1
    side, ratio = scores.centred_square(data, t, centre)
    assert side == 2 * i + 1 and ratio == pytest.approx(side**2 / (101 * 121))
    radius = math.sqrt(sigma**2 + 1 / 12) * math.sqrt(chi2.ppf(t, 2))
    assert abs(scores.mass_radius(data, t, centre) - radius) < 0.2
    # measured around the map's centre instead, the same mass looks far wider
    assert scores.centred_square(data, t)[0] > side + 10  # the map centre is 20 rows away
    with pytest.raises(ValueError, match="outside"):
        scores.mean_distance(data, (101, 0))


def test_centred_square_is_clipped_at_the_map_edge():
    data = np.zeros((9, 9))
    data[0, 0] = 1.0  # all mass in a corner: only the whole 9x9 square holds it
    assert scores.centred_square(data, 0.5) == (9.0, 1.0)
    data = np.zeros((8, 8))  # even side: the centre is (4, 4), row 0 lies 4 rows above it
    data[0, 0] = 1.0
    assert scores.centred_square(data, 0.5) == (9.0, 1.0)  # 9x9 clipped to the 8x8 map
    data = np.zeros((8, 8))
    data[4, 7] = 1.0  # column 7 is 3 columns right of the centre: a 7x7 square, fully inside
    assert scores.centred_square(data, 0.5) == (7.0, 49 / 64)
    data = np.zeros((4, 10))  # centre (2, 5)
    data[2, 0] = 1.0  # 5 columns left of the centre: 11x11 clipped to 4 rows x 10 columns
    assert scores.centred_square(data, 0.5) == (11.0, 1.0)
    data = np.zeros((4, 10))
    data[2, 9] = 1.0  # 4 columns right: 9x9 clipped to 4 rows x columns 1..9
    assert scores.centred_square(data, 0.5) == (9.0, 4 * 9 / 40)


def replknet_get_rectangle(data: np.ndarray, thresh: float):
    """RepLKNet's erf/analyze_erf.py ``get_rectangle``, transcribed as the peer."""
    h, w = data.shape
    all_sum = np.sum(data)
    for i in range(1, h // 2):
        selected_area = data[h // 2 - i:h // 2 + 1 + i, w // 2 - i:w // 2 + 1 + i]
        area_sum = np.sum(selected_area)
        if area_sum / all_sum > thresh:
            return i * 2 + 1, (i * 2 + 1) / h * (i * 2 + 1) / w
    return None


@pytest.mark.parametrize("seed", range(5))
def test_centred_square_agrees_with_replknet_script(seed):
    rng = np.random.default_rng(seed)
    size = int(rng.integers(20, 60))
    data = np.log10(rng.gamma(0.5, 1.0, (size, size)) + 1)  # their log10(x + 1) scaling
    for t in THRESHOLDS:
        peer = replknet_get_rectangle(data, t)
        ours = scores.centred_square(data, t)
        if peer is None:  # the script stops before the square that covers the map
            assert ours[0] >= 2 * (size // 2) - 1
        elif peer[0] > 3:  # the script starts at 3x3; we also try 1x1
            assert ours == pytest.approx(peer)


@pytest.mark.parametrize("t", THRESHOLDS)
def test_radius_and_top_pixels_match_rayleigh_closed_form(t):
    sigma = 8.0
    data = pixel_gaussian((161, 161), sigma)
    # pixel integration adds the variance of a unit box, 1/12, per axis
    sigma_eff = math.sqrt(sigma**2 + 1 / 12)
    # |X| of a 2-D isotropic Gaussian: |X|^2 / sigma^2 is chi-square with 2 degrees of freedom
    radius = sigma_eff * math.sqrt(chi2.ppf(t, 2))
    assert radius == pytest.approx(sigma_eff * math.sqrt(-2 * math.log(1 - t)))
    # discrete radii are distances between pixel centres, spaced far below 0.2 pixels out here
    assert abs(scores.mass_radius(data, t) - radius) < 0.2
    # the densest pixels form a disc of area pi r^2
    equivalent_radius = math.sqrt(scores.top_pixels_ratio(data, t) * data.size / math.pi)
    assert abs(equivalent_radius - radius) < 0.05


def test_mean_distance_is_rayleigh_mean():
    sigma = 8.0
    data = pixel_gaussian((161, 161), sigma)
    expected = math.sqrt(sigma**2 + 1 / 12) * math.sqrt(math.pi / 2)
    assert scores.mean_distance(data) == pytest.approx(expected, rel=5e-4)


def test_point_mass_scores():
    data = np.zeros((7, 9))
    data[3, 4] = 2.0
    assert scores.centred_square(data, 0.99) == (1.0, 1 / 63)
    assert scores.top_pixels_ratio(data, 0.99) == 1 / 63
    assert scores.mass_radius(data, 0.99) == 0.0
    assert scores.mean_distance(data) == 0.0


def test_mass_radius_counts_every_pixel_at_the_radius():
    data = np.zeros((5, 5))
    data[2, 2] = 1.0
    data[2, 3] = data[2, 1] = data[1, 2] = data[3, 2] = 1.0  # four pixels at distance 1
    assert scores.mass_radius(data, 0.5) == 1.0
    assert scores.mass_radius(data, 0.1) == 0.0


@pytest.mark.parametrize("bad", [np.zeros((4, 4)), -np.ones((3, 3)), np.ones(5)])
def test_bad_maps_are_rejected(bad):
    with pytest.raises(ValueError):
        scores.centred_square(bad, 0.5)


def test_threshold_out_of_range_is_rejected():
    with pytest.raises(ValueError):
        scores.mass_radius(np.ones((3, 3)), 1.0)
