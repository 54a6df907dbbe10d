"""The result of a landscape: coordinates, surfaces (rows beta, columns alpha), directions."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from vitprobe.landscape.directions import Direction
from vitprobe.result import Result

if TYPE_CHECKING:
    from matplotlib.figure import Figure

METRICS = ("loss", "accuracy")


@dataclass(kw_only=True)
class LandscapeResult(Result):
    """Loss and accuracy at theta0 + alpha * d1 + beta * d2.

    ``loss`` and ``accuracy`` have shape ``[len(betas), len(alphas)]`` (rows beta, columns
    alpha); a 1-D slice has one row and ``betas == [0.0]``, and ``loss[0]`` is its curve. Points a ``--shard`` job did not
    compute are NaN (``complete`` is False). ``directions`` holds d1 (and d2) on the CPU;
    ``cosine`` is cos(d1, d2) before d2 was orthogonalised (None in 1-D). ``info`` records
    the run key, the policy, eigenvalues for ``eigen`` directions, and how many points this
    call computed versus found already done.
    """

    kind: str
    alphas: np.ndarray
    betas: np.ndarray
    loss: np.ndarray
    accuracy: np.ndarray
    directions: list[Direction]
    cosine: float | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def is_1d(self) -> bool:
        return len(self.betas) == 1

    @property
    def complete(self) -> bool:
        """True when every point was computed (by this call, a resumed one, or other ranks)."""
        return self.info.get("missing", 0) == 0

    def surface(self, metric: str) -> np.ndarray:
        if metric not in METRICS:
            raise ValueError(f"metric is one of {METRICS}, got {metric!r}")
        return self.loss if metric == "loss" else self.accuracy

    def at(self, alpha: float, beta: float = 0.0, metric: str = "loss") -> float:
        """The value at grid coordinates (alpha, beta), which must be grid points."""
        columns, rows = np.flatnonzero(self.alphas == alpha), np.flatnonzero(self.betas == beta)
        if columns.size == 0 or rows.size == 0:
            raise ValueError(f"({alpha}, {beta}) is not a point of this grid")
        return float(self.surface(metric)[rows[0], columns[0]])

    @property
    def center(self) -> dict[str, float]:
        """Loss and accuracy of the unperturbed model (alpha = beta = 0); NaN off the grid."""
        if not (self.alphas == 0).any() or not (self.betas == 0).any():
            return {metric: float("nan") for metric in METRICS}
        return {metric: self.at(0.0, 0.0, metric) for metric in METRICS}

    INDEX: ClassVar[tuple[str, ...]] = ("metric", "alpha", "beta")
    REPORTED: ClassVar[tuple[str, ...]] = ()  # a surface is a figure, not a table

    def rows(self) -> list[dict]:
        """Tidy rows: metric (loss | accuracy), alpha, beta, value."""
        alpha, beta = np.meshgrid(self.alphas, self.betas)
        return [{"metric": metric, "alpha": float(a), "beta": float(b), "value": float(v)}
                for metric in METRICS
                for a, b, v in zip(alpha.ravel(), beta.ravel(), self.surface(metric).ravel())]

    def plot(self) -> Figure:
        """The loss curve of a 1-D slice, the contour plot of a 2-D one."""
        from vitprobe.landscape.figures import plot_contours, plot_curves

        return plot_curves([self]) if self.is_1d else plot_contours([self])
