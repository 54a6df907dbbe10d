"""Receptive fields: effective (Luo et al. 2016, RepLKNet's protocol) and theoretical.

``effective_receptive_field(model, images, layer=None, ...)`` measures how strongly each input
pixel moves the centre unit of a layer; ``theoretical_receptive_field(model, layer)`` gives the
window a CNN layer's unit can see at all, with its jump (effective stride).
"""

from vitprobe.receptive_field.effective import default_layers, effective_receptive_field
from vitprobe.receptive_field.result import ReceptiveFieldResult
from vitprobe.receptive_field.scores import (
    DEFAULT_THRESHOLDS,
    centred_square,
    mass_radius,
    mean_distance,
    top_pixels_ratio,
)
from vitprobe.receptive_field.theoretical import TheoreticalField, theoretical_receptive_field

__all__ = [
    "DEFAULT_THRESHOLDS",
    "ReceptiveFieldResult",
    "TheoreticalField",
    "centred_square",
    "default_layers",
    "effective_receptive_field",
    "mass_radius",
    "mean_distance",
    "theoretical_receptive_field",
    "top_pixels_ratio",
]
