"""``ReceptiveFieldResult``: the effective receptive field of one model at several layers."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from vitprobe.receptive_field import scores
from vitprobe.receptive_field.theoretical import TheoreticalField
from vitprobe.result import Result

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass(kw_only=True)
class ReceptiveFieldResult(Result):
    """Effective receptive fields (Luo et al. 2016) of one model, one map per layer.

    ``raw[i]`` is the mean over images of the input-gradient map of layer ``layers[i]``'s
    centre unit (after the ``gradient`` rule, summed over input channels), in the input's
    (H, W) pixels; ``scaled[i]`` is its display version (``scale``: ``log`` is
    ``log10(raw + 1)``, ``power`` is ``raw ** exponent``), divided by its maximum.
    The scores are computed on ``scaled`` when ``score_on == "scaled"`` (RepLKNet's
    ``analyze_erf.py``) or on ``raw``, around the pixel ``score_centres[i]`` (``centre``:
    ``field`` is the pixel at the centre of the measured unit's field, ``map`` the map's centre
    pixel as in the script). ``centre_units[i]`` is the (row, column) of the unit in the layer's
    output grid ``output_grids[i]``; ``theoretical[i]`` is the theoretical field of a CNN layer
    (None for ViTs or when the graph could not be traced).
    """

    family: str
    input_size: tuple[int, int]
    layers: list[str]
    raw: np.ndarray
    scaled: np.ndarray
    centre_units: list[tuple[int, int]]
    score_centres: list[tuple[int, int]]
    output_grids: list[tuple[int, int]]
    gradient: str
    objective_relu: bool
    scale: str
    exponent: float
    score_on: str
    centre: str
    thresholds: tuple[float, ...] = scores.DEFAULT_THRESHOLDS
    theoretical: list[TheoreticalField | None] = field(default_factory=list)
    num_skipped: int = 0

    def score_map(self, index: int) -> np.ndarray:
        return self.scaled[index] if self.score_on == "scaled" else self.raw[index]

    def mean_distance(self, index: int) -> float:
        """Mass-weighted mean distance (pixels) of one layer's map from its score centre."""
        data = self.score_map(index)
        if not data.sum() > 0:
            return math.nan
        return scores.mean_distance(data, self.score_centres[index])

    def layer_scores(self, index: int) -> list[tuple[str, float, float]]:
        """(metric, threshold, value) of one layer; NaN thresholds for threshold-free metrics."""
        data = self.score_map(index)
        centre = self.score_centres[index]
        rows: list[tuple[str, float, float]] = [("centre_row", math.nan, float(centre[0])),
                                                ("centre_col", math.nan, float(centre[1]))]
        if not data.sum() > 0:  # a map without mass (every gradient zero) has no extent
            names = ("square_side", "square_area_ratio", "top_pixels_ratio", "mass_radius")
            rows += [(name, t, math.nan) for t in self.thresholds for name in names]
            rows.append(("mean_distance", math.nan, math.nan))
        else:
            for t in self.thresholds:
                side, ratio = scores.centred_square(data, t, centre)
                rows += [("square_side", t, side), ("square_area_ratio", t, ratio),
                         ("top_pixels_ratio", t, scores.top_pixels_ratio(data, t)),
                         ("mass_radius", t, scores.mass_radius(data, t, centre))]
            rows.append(("mean_distance", math.nan, self.mean_distance(index)))
        theory = self.theoretical[index] if index < len(self.theoretical) else None
        if theory is not None:
            for name, (rows_value, cols_value) in (("theoretical_size", theory.size),
                                                   ("theoretical_jump", theory.jump)):
                if rows_value == cols_value or (math.isnan(rows_value) and math.isnan(cols_value)):
                    rows.append((name, math.nan, rows_value))
                else:
                    rows += [(f"{name}_rows", math.nan, rows_value),
                             (f"{name}_cols", math.nan, cols_value)]
        return rows

    INDEX: ClassVar[tuple[str, ...]] = ("metric", "layer", "threshold")
    REPORTED: ClassVar[tuple[str, ...]] = ("mean_distance",)

    def rows(self) -> list[dict]:
        """Rows ``metric, layer, threshold, value`` (pixels for sides, radii, distances, sizes and
        jumps; fractions of the input's pixels for area ratios)."""
        return [{"metric": metric, "layer": layer, "threshold": t, "value": value}
                for index, layer in enumerate(self.layers)
                for metric, t, value in self.layer_scores(index)]

    def plot(self) -> Figure:
        """The effective receptive field heatmaps, one per layer."""
        from vitprobe.receptive_field.figures import erf_heatmaps

        return erf_heatmaps([self])
