"""Result dataclasses of the sharpness analysis (see :mod:`vitprobe.result` for the shared header)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch
from scipy import stats

from vitprobe.result import Result

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass(kw_only=True)
class _Sharpness(Result):
    """A sharpness result: the header, and the parameters measured."""

    parameters: int  # how many parameters the Hessian (or perturbation) covers
    params: str  # the parameter filter, "all" when none

    ANNOTATIONS: ClassVar[tuple[str, ...]] = ("method", "parameters", "params")

    def _measured(self) -> dict:
        return {"parameters": self.parameters, "params": self.params}


@dataclass(kw_only=True)
class SpectrumResult(_Sharpness):
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

    INDEX: ClassVar[tuple[str, ...]] = ("metric", "k")
    LABELS: ClassVar[dict[str, str]] = {"eigenvalue": "lambda_{k}"}
    ANNOTATIONS: ClassVar[tuple[str, ...]] = ("method", "hvps", "residual", "tol", "converged", "loss",
                                              *_Sharpness.ANNOTATIONS[1:])

    def rows(self) -> list[dict]:
        return [{"metric": "eigenvalue", "k": i + 1, "value": float(v), "method": self.method,
                 "hvps": int(h), "residual": float(r), "tol": self.tol, "converged": self.converged,
                 "loss": self.loss, **self._measured()}
                for i, (v, r, h) in enumerate(zip(self.eigenvalues, self.residuals, self.hvps))]

    def plot(self) -> Figure:
        """The top eigenvalues as bars."""
        from vitprobe.sharpness.figures import eigenvalue_bars

        return eigenvalue_bars(self)

@dataclass(kw_only=True)
class TraceResult(_Sharpness):
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

    ANNOTATIONS: ClassVar[tuple[str, ...]] = ("method", "hvps", "confidence", *_Sharpness.ANNOTATIONS[1:])

    def rows(self) -> list[dict]:
        low, high = self.interval
        return [{"metric": "trace", "value": self.trace, "ci_low": low, "ci_high": high,
                 "std_error": self.std_error, "method": self.method, "hvps": self.hvps,
                 "confidence": self.confidence, **self._measured()}]


@dataclass(kw_only=True)
class DensityResult(_Sharpness):
    """Spectral density by stochastic Lanczos quadrature.

    ``nodes[j]`` and ``weights[j]`` are the Gauss quadrature nodes and weights of random vector j
    (each row of weights sums to 1/num_probes); ``density`` is their Gaussian-smoothed sum on
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

    INDEX: ClassVar[tuple[str, ...]] = ("metric", "vector", "node")
    ANNOTATIONS: ClassVar[tuple[str, ...]] = ("weight", "method", "hvps", "sigma", *_Sharpness.ANNOTATIONS[1:])
    REPORTED: ClassVar[tuple[str, ...]] = ()  # quadrature nodes are a figure, not a table

    def rows(self) -> list[dict]:
        return [{"metric": "slq_node", "vector": j, "node": i, "value": float(node), "weight": float(w),
                 "method": self.method, "hvps": self.hvps, "sigma": self.sigma, **self._measured()}
                for j, (row_nodes, row_weights) in enumerate(zip(self.nodes, self.weights))
                for i, (node, w) in enumerate(zip(row_nodes, row_weights)) if np.isfinite(node)]

    def plot(self) -> Figure:
        """The eigenvalue density on a log scale."""
        from vitprobe.sharpness.figures import density_plot

        return density_plot(self)

@dataclass(kw_only=True)
class SamResult(_Sharpness):
    """SAM sharpness per radius: max over ||T^-1 eps|| <= rho of L(w + eps) - L(w), averaged over
    micro-batches of ``m`` images (all images when m is None)."""

    rhos: np.ndarray = field(default_factory=lambda: np.zeros(0))
    sharpness: np.ndarray = field(default_factory=lambda: np.zeros(0))
    perturbed_loss: np.ndarray = field(default_factory=lambda: np.zeros(0))
    loss: float = float("nan")
    ascent_steps: int = 1
    adaptive: bool = False
    m: int | None = None

    INDEX: ClassVar[tuple[str, ...]] = ("metric", "rho")
    LABELS: ClassVar[dict[str, str]] = {"sam_sharpness": "sam_sharpness[rho={rho}]"}  # even with one rho
    ANNOTATIONS: ClassVar[tuple[str, ...]] = ("method", "ascent_steps", "adaptive", "m", "loss",
                                              *_Sharpness.ANNOTATIONS[1:])

    def rows(self) -> list[dict]:
        method = "asam" if self.adaptive else "sam"
        return [{"metric": "sam_sharpness", "rho": float(r), "value": float(s), "method": method,
                 "ascent_steps": self.ascent_steps, "adaptive": self.adaptive,
                 "m": self.m if self.m is not None else np.nan, "loss": self.loss, **self._measured()}
                for r, s in zip(self.rhos, self.sharpness)]


def adaptive_metric(kind: str, norm: str, adaptive: bool) -> str:
    """The metric name of one adaptive-sharpness definition, e.g. ``adaptive_worst_linf_sharpness``."""
    return f"{'adaptive_' if adaptive else ''}{kind}_{norm}_sharpness"


@dataclass(kw_only=True)
class AdaptiveSharpnessResult(_Sharpness):
    """Adaptive sharpness per radius (Andriushchenko et al. 2023): the mean over batches of m
    images of the worst (or average) loss increase in the ball ||delta / |w| ||_p <= rho, with the
    standard error and a 95% Student-t interval over the batches; ``per_batch`` is (batches, rhos)."""

    rhos: np.ndarray = field(default_factory=lambda: np.zeros(0))
    kind: str = "worst"
    norm: str = "linf"
    adaptive: bool = True
    m: int | None = 128
    steps: int = 20
    samples: int = 20
    normalise_logits: bool = False
    sharpness: np.ndarray = field(default_factory=lambda: np.zeros(0))
    std_error: np.ndarray = field(default_factory=lambda: np.zeros(0))
    ci_low: np.ndarray = field(default_factory=lambda: np.zeros(0))
    ci_high: np.ndarray = field(default_factory=lambda: np.zeros(0))
    per_batch: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    loss: float = float("nan")

    INDEX: ClassVar[tuple[str, ...]] = ("metric", "rho")
    LABELS: ClassVar[dict[str, str]] = {adaptive_metric(k, n, a): f"{adaptive_metric(k, n, a)}[rho={{rho}}]"
                                        for k in ("worst", "average") for n in ("linf", "l2")
                                        for a in (True, False)}
    ANNOTATIONS: ClassVar[tuple[str, ...]] = ("method", "m", "steps", "samples", "batches",
                                              "normalise_logits", "loss", *_Sharpness.ANNOTATIONS[1:])

    @property
    def metric(self) -> str:
        return adaptive_metric(self.kind, self.norm, self.adaptive)

    def rows(self) -> list[dict]:
        method = "auto-pgd" if self.kind == "worst" else "random"
        return [{"metric": self.metric, "rho": float(r), "value": float(s), "std_error": float(e),
                 "ci_low": float(low), "ci_high": float(high), "method": method,
                 "m": self.m if self.m is not None else np.nan, "steps": self.steps if self.kind == "worst" else np.nan,
                 "samples": self.samples if self.kind == "average" else np.nan, "batches": len(self.per_batch),
                 "normalise_logits": self.normalise_logits, "loss": self.loss, **self._measured()}
                for r, s, e, low, high in zip(self.rhos, self.sharpness, self.std_error, self.ci_low, self.ci_high)]


@dataclass(kw_only=True)
class KeskarResult(_Sharpness):
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

    INDEX: ClassVar[tuple[str, ...]] = ("metric", "epsilon")
    LABELS: ClassVar[dict[str, str]] = {"keskar_sharpness": "keskar_sharpness[epsilon={epsilon}]"}
    ANNOTATIONS: ClassVar[tuple[str, ...]] = ("method", "solver", "start", "iterations", "evaluations",
                                              "solver_message", "maximum_at_start", "loss",
                                              *_Sharpness.ANNOTATIONS[1:])

    def rows(self) -> list[dict]:
        space = "full space" if self.subspace_dim is None else f"subspace p={self.subspace_dim}"
        return [{"metric": "keskar_sharpness", "epsilon": self.epsilon, "value": self.sharpness,
                 "method": space, "solver": self.method, "start": self.start,
                 "iterations": self.iterations, "evaluations": self.evaluations,
                 "solver_message": self.message, "maximum_at_start": self.maximum_at_start,
                 "loss": self.loss, **self._measured()}]
