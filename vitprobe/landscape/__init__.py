"""Loss landscapes (Li, Xu, Taylor, Studer & Goldstein 2018): 1-D and 2-D slices of the loss
along filter-normalised random directions, Hessian eigenvectors, or the line between two
checkpoints; exact (no drift), resumable and sharded."""

from vitprobe.landscape.directions import (
                                           checkpoint_direction,
                                           eigen_directions,
                                           filter_normalize,
                                           filter_rule,
                                           orthogonalize,
                                           random_direction,
)
from vitprobe.landscape.engine import loss_landscape
from vitprobe.landscape.grid import Grid
from vitprobe.landscape.result import LandscapeResult
from vitprobe.landscape.resumable import resumable_landscape

__all__ = ["Grid", "LandscapeResult", "checkpoint_direction", "eigen_directions", "filter_normalize",
           "filter_rule", "loss_landscape", "orthogonalize", "random_direction", "resumable_landscape"]
