"""Result dataclasses of the sharpness analysis; each gives tidy rows with ``to_frame()``."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import stats
import pandas as pd
import torch

COLUMNS = ["model", "metric", "value", "k", "method", "hvps", "residual", "std_error", "rho",
           "steps", "adaptive", "m", "epsilon", "vector", "weight", "loss", "tol", "converged",
           "seconds", "num_images", "num_params", "params"]


def tidy(rows: list[dict]) -> pd.DataFrame:
    """Rows in the shared column order (columns a metric does not use stay empty)."""
    frame = pd.DataFrame(rows)
    return frame.reindex(columns=[c for c in COLUMNS if c in frame.columns]
                         + [c for c in frame.columns if c not in COLUMNS])


@dataclass
class _Common:
    model: str
    seconds: float
    num_images: int
    num_params: int
    params: str  # the parameter filter, "all" when none

    def _base(self) -> dict:
        return {"model": self.model, "seconds": self.seconds, "num_images": self.num_images,
                "num_params": self.num_params, "params": self.params}


@dataclass
class SpectrumResult(_Common):
    """Top-k Hessian eigenvalues, largest first.

    ``eigenvectors[i]`` is a list of tensors aligned with ``param_names`` (unit norm overall);
    ``residuals[i]`` is ||H y - theta y|| / |theta|; ``hvps[i]`` the Hessian-vector products spent
    until eigenvalue i met the tolerance (``total_hvps`` for the run).
    """

    method: str = "lanczos"
    eigenvalues: np.ndarray = field(default_factory=lambda: np.zeros(0))
    residuals: np.ndarray = field(default_factory=lambda: np.zeros(0))
    hvps: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))
    total_hvps: int = 0
    tol: float = 1e-3
    converged: bool = True
    loss: float = float("nan")
    param_names: list[str] = field(default_factory=list)
    eigenvectors: list[list[torch.Tensor]] = field(default_factory=list)
    choices: dict = field(default_factory=dict)

    def to_frame(self) -> pd.DataFrame:
        return tidy([{**self._base(), "metric": "eigenvalue", "value": float(v), "k": i + 1,
                      "method": self.method, "hvps": int(h), "residual": float(r),
                      "loss": self.loss, "tol": self.tol, "converged": self.converged}
                     for i, (v, r, h) in enumerate(zip(self.eigenvalues, self.residuals, self.hvps))])


@dataclass
class TraceResult(_Common):
    """Hessian trace estimate with its standard error and a Student-t confidence interval
    (Hutchinson or Hutch++; see :mod:`vitprobe.sharpness.trace` for why the interval covers)."""

    method: str = "hutch++"
    trace: float = float("nan")
    std_error: float = float("nan")
    samples: np.ndarray = field(default_factory=lambda: np.zeros(0))
    hvps: int = 0
    confidence: float = 0.95

    @property
    def interval(self) -> tuple[float, float]:
        """The ``confidence`` interval trace -/+ t_{n-1} * std_error over the n Hutchinson terms."""
        n = len(self.samples)
        if n < 2:
            return float("nan"), float("nan")
        half = float(stats.t.ppf(0.5 + self.confidence / 2, n - 1)) * self.std_error
        return self.trace - half, self.trace + half

    def to_frame(self) -> pd.DataFrame:
        low, high = self.interval
        return tidy([{**self._base(), "metric": "trace", "value": self.trace, "method": self.method,
                      "hvps": self.hvps, "std_error": self.std_error, "ci_low": low, "ci_high": high,
                      "confidence": self.confidence}])


@dataclass
class DensityResult(_Common):
    """Spectral density by stochastic Lanczos quadrature.

    ``nodes[j]`` and ``weights[j]`` are the Gauss quadrature nodes and weights of random vector j
    (each row of weights sums to 1/num_vectors); ``density`` is their Gaussian-smoothed sum on
    ``grid`` (integrates to 1).
    """

    method: str = "slq"
    nodes: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    weights: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    grid: np.ndarray = field(default_factory=lambda: np.zeros(0))
    density: np.ndarray = field(default_factory=lambda: np.zeros(0))
    sigma: float = float("nan")
    hvps: int = 0
    reorthogonalise: bool = True

    def to_frame(self) -> pd.DataFrame:
        return tidy([{**self._base(), "metric": "slq_node", "value": float(node), "weight": float(w),
                      "vector": j, "method": self.method, "hvps": self.hvps}
                     for j, (row_nodes, row_weights) in enumerate(zip(self.nodes, self.weights))
                     for node, w in zip(row_nodes, row_weights) if np.isfinite(node)])


@dataclass
class SamResult(_Common):
    """SAM sharpness per radius: max over ||T^-1 eps|| <= rho of L(w + eps) - L(w), averaged over
    micro-batches of ``m`` images (all images when m is None)."""

    rhos: np.ndarray = field(default_factory=lambda: np.zeros(0))
    sharpness: np.ndarray = field(default_factory=lambda: np.zeros(0))
    perturbed_loss: np.ndarray = field(default_factory=lambda: np.zeros(0))
    loss: float = float("nan")
    steps: int = 1
    adaptive: bool = False
    m: int | None = None

    def to_frame(self) -> pd.DataFrame:
        method = "asam" if self.adaptive else "sam"
        return tidy([{**self._base(), "metric": "sam_sharpness", "value": float(s), "rho": float(r),
                      "method": method, "steps": self.steps, "adaptive": self.adaptive,
                      "m": self.m if self.m is not None else np.nan, "loss": self.loss}
                     for r, s in zip(self.rhos, self.sharpness)])


@dataclass
class KeskarResult(_Common):
    """Keskar et al. (2017) sharpness: 100 (max_{y in C_eps} f(x + A y) - f(x)) / (1 + f(x))."""

    epsilon: float = 1e-3
    sharpness: float = float("nan")
    loss: float = float("nan")
    max_loss: float = float("nan")
    subspace_dim: int | None = None
    evaluations: int = 0
    method: str = "lbfgsb"
    start: str = "corner"
    iterations: int = 0
    message: str = ""
    maximum_at_start: bool = False

    def to_frame(self) -> pd.DataFrame:
        space = "full space" if self.subspace_dim is None else f"subspace p={self.subspace_dim}"
        return tidy([{**self._base(), "metric": "keskar_sharpness", "value": self.sharpness,
                      "epsilon": self.epsilon, "method": space, "solver": self.method,
                      "start": self.start, "iterations": self.iterations, "solver_message": self.message,
                      "maximum_at_start": self.maximum_at_start, "loss": self.loss,
                      "steps": self.evaluations}])
