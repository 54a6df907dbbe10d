"""``SharpnessTracker``: lambda_1 of the training loss's Hessian while a model trains.

Cohen, Kaur, Li, Kolter & Talwalkar (ICLR 2021), "Gradient descent on neural networks typically
occurs at the edge of stability": under full-batch gradient descent with step size lr, lambda_1
of the training loss rises (progressive sharpening) until it reaches 2 / lr, then hovers there
(the edge of stability). They measure lambda_1 by Lanczos on a fixed subset of the training data
every few steps; so does this tracker, on the batch it is given (give it the same batch every time
for a curve of the weights alone).

Each check is :func:`~vitprobe.sharpness.spectrum.eigenpairs` on a
:class:`~vitprobe.sharpness.operator.HessianOperator`, warm-started from the previous check's
eigenvector: the weights move little between checks, so that vector is nearly the new one and
the residual reaches ``tol`` in fewer products than from a random vector (``warm_start=False``
starts cold; ``benchmarks/results/tracker.md`` compares the two on the demo zoo: 0.77-0.80x the
products with checks 10 steps apart, 0.81-1.00x 50 steps apart, the same lambda_1 to 3.5e-4).

A residual below ``tol`` certifies that the value is near *an* eigenvalue, not the largest one.
When two eigenvalues cross between checks, the previous eigenvector is nearly the new
*second or third* one, and a warm Lanczos stopped on it after 2 products (measured on the demo
ViT: 13.17, the true lambda_3, for lambda_1 = 15.43). A warm run therefore takes at least
``MIN_WARM_STEPS`` products, which found lambda_1 in all 60 checks of the demo ViT and ResNet
(10 steps apart, against tol 1e-6 references; the cold start missed once) at 0.73-0.81x the cold
start's products. It still misses when the start holds almost nothing of the new top
eigenvector (under about 0.5 % on a synthetic crossing: ``tests/test_sharpness_tracker.py``), as a
random start can at a loose ``tol``: lower ``tol`` where a check must be certain.

Where it departs from the reference: 2 / lr is the threshold of (stochastic) gradient descent,
and the line drawn is always 2 / lr. For Adam the edge of stability concerns the preconditioned
Hessian and the threshold (2 + 2 beta_1) / ((1 - beta_1) lr) (Cohen et al. 2022, "Adaptive gradient
methods at the edge of stability"), which this tracker does not compute. As every sharpness
measurement here, a check runs the model in eval mode (BatchNorm running statistics, no
dropout) and puts every training flag back; the training loop's gradients, optimizer and random
state are not touched, so a tracked run trains exactly as an untracked one.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch
from torch import nn

from vitprobe.data.batches import DataLike
from vitprobe.errors import UserError
from vitprobe.models.loaded import LoadedModel, as_loaded
from vitprobe.models.module_state import eval_mode
from vitprobe.report.files import write_csv
from vitprobe.result import Result
from vitprobe.sharpness.loss import LossFn
from vitprobe.sharpness.operator import HessianOperator
from vitprobe.sharpness.spectrum import eigenpairs
from vitprobe.sharpness.vectors import ParamFilter, filter_label

MIN_WARM_STEPS = 4  # products a warm-started check takes at least (see the module docstring)

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass(kw_only=True)
class TrackResult(Result):
    """lambda_1 at each checked training step, with the solver's residual and products, the
    learning rate and the edge-of-stability threshold 2 / lr."""

    steps: list[int] = field(default_factory=list)
    lambda_1: list[float] = field(default_factory=list)
    residuals: list[float] = field(default_factory=list)  # relative: ||H y - theta y|| / |theta|
    hvps: list[int] = field(default_factory=list)
    learning_rates: list[float] = field(default_factory=list)  # NaN where not given
    losses: list[float] = field(default_factory=list)
    check_seconds: list[float] = field(default_factory=list)
    warm_start: bool = True
    tol: float = 1e-2
    params: str = "all"

    INDEX: ClassVar[tuple[str, ...]] = ("metric", "step")
    ANNOTATIONS: ClassVar[tuple[str, ...]] = ("residual", "hvps", "lr", "eos_threshold", "loss", "warm_start",
                                              "tol", "params", "check_seconds")
    LABELS: ClassVar[dict[str, str]] = {"lambda_1": "lambda_1[step={step}]"}

    def rows(self) -> list[dict]:
        return [{"metric": "lambda_1", "step": step, "value": value, "residual": residual, "hvps": hvps,
                 "lr": lr, "eos_threshold": 2 / lr if lr > 0 else np.nan, "loss": loss,
                 "warm_start": self.warm_start, "tol": self.tol, "params": self.params, "check_seconds": seconds}
                for step, value, residual, hvps, lr, loss, seconds in zip(
                    self.steps, self.lambda_1, self.residuals, self.hvps, self.learning_rates, self.losses,
                    self.check_seconds)]

    def plot(self) -> Figure:
        """lambda_1 against the training step, with the 2 / lr line."""
        return track_figure([self])


class SharpnessTracker:
    """lambda_1 of the loss Hessian every ``every`` training steps, warm-started Lanczos.

    Call it from the training loop after the optimizer step (plain PyTorch)::

        tracker = vitprobe.SharpnessTracker(every=100, csv="sharpness-track.csv")
        for step, (x, y) in enumerate(loader):
            ...; optimizer.step()
            tracker(step, model, fixed_batch, lr=optimizer.param_groups[0]["lr"])
        tracker.result().plot()

    or hand :class:`vitprobe.sharpness.lightning.SharpnessCallback` to a Lightning ``Trainer``.
    ``batch`` is anything an analysis takes as data (``(images, labels)``, batches, a loader).
    ``tol``: the solver's relative residual (1e-2: lambda_1 to about 1e-4 relative, since the
    Ritz value's error is of the order of the squared residual); ``csv``: rewritten atomically
    after every check, so an interrupted run keeps what it measured.
    """

    def __init__(self, every: int = 100, *, tol: float = 1e-2, max_iter: int = 100, warm_start: bool = True,
                 loss_fn: LossFn | None = None, params: ParamFilter = None, seed: int = 0,
                 label: str | None = None, csv: str | Path | None = None) -> None:
        if every < 1 or not tol > 0 or max_iter < 1:
            raise UserError(f"need every >= 1, tol > 0 and max_iter >= 1 (got {every}, {tol}, {max_iter})")
        self.every, self.tol, self.max_iter, self.warm_start = every, tol, max_iter, warm_start
        self.loss_fn, self.params, self.seed, self.label = loss_fn, params, seed, label
        self.csv = Path(csv) if csv is not None else None
        self._result: TrackResult | None = None
        self._loaded: tuple[nn.Module, LoadedModel] | None = None
        self._vector: torch.Tensor | None = None

    def due(self, step: int) -> bool:
        """Whether ``step`` is a check: every ``every``-th step, once each."""
        measured = self._result.steps if self._result is not None else []
        return step % self.every == 0 and (not measured or measured[-1] != step)

    def __call__(self, step: int, model: nn.Module | LoadedModel, batch: DataLike, *,
                 lr: float | None = None) -> float | None:
        """lambda_1 at ``step`` when it is due (else None, at no cost)."""
        return self.measure(step, model, batch, lr=lr) if self.due(step) else None

    def measure(self, step: int, model: nn.Module | LoadedModel, batch: DataLike, *,
                lr: float | None = None) -> float:
        """lambda_1 now, whatever the step; recorded under ``step``."""
        started = time.perf_counter()
        loaded = self._wrap(model)
        operator = HessianOperator(loaded, batch, loss_fn=self.loss_fn, params=self.params)
        start = self._vector if self.warm_start and self._vector is not None else None
        seed = self.seed + len(self._result.steps if self._result is not None else [])
        pairs = eigenpairs(operator, k=1, tol=self.tol, max_iter=self.max_iter, seed=seed, start=start,
                           min_steps=MIN_WARM_STEPS if start is not None else 1)
        operator.release()
        self._vector = pairs.vectors[0].detach()
        result = self._result or TrackResult(model=loaded.label, images=operator.num_images,
                                             warm_start=self.warm_start, tol=self.tol,
                                             params=filter_label(self.params))
        self._result = result
        result.steps.append(int(step))
        result.lambda_1.append(float(pairs.values[0]))
        result.residuals.append(float(pairs.residuals[0]))
        result.hvps.append(int(pairs.total_hvps))
        result.learning_rates.append(float(lr) if lr is not None else float("nan"))
        result.losses.append(operator.loss)
        result.check_seconds.append(time.perf_counter() - started)
        result.seconds = float(sum(result.check_seconds))
        if self.csv is not None:
            write_csv(result.to_frame(), self.csv)
        return result.lambda_1[-1]

    def result(self) -> TrackResult:
        """Every check so far."""
        if self._result is None:
            raise UserError("the tracker has measured nothing yet: no step was due")
        return self._result

    def _wrap(self, model: nn.Module | LoadedModel) -> LoadedModel:
        """The model as analyses take it, wrapped once (describing a model walks its modules);
        wrapping puts a module in eval mode, so its training flags are put back."""
        if isinstance(model, LoadedModel):
            return model
        if self._loaded is None or self._loaded[0] is not model:
            with eval_mode(model):
                self._loaded = (model, as_loaded(model, label=self.label))
        return self._loaded[1]


def track_figure(results: Sequence[TrackResult]) -> Figure:
    """lambda_1 against the training step, one line per model, with the solver's interval (an
    eigenvalue lies within the residual ||H y - theta y|| of each value: the checks use one fixed
    batch, so there is no sampling interval to draw) and each model's 2 / lr (dashed, same colour)
    where the learning rate was given; a log axis when the values span more than a decade."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5.2, 3.6))
    values, thresholds = [], []
    for index, result in enumerate(results):
        colour = f"C{index}"
        axis.plot(result.steps, result.lambda_1, marker="o", markersize=3, color=colour, label=result.model)
        value, residual = np.asarray(result.lambda_1), np.asarray(result.residuals)
        axis.fill_between(result.steps, value - residual * np.abs(value), value + residual * np.abs(value),
                          color=colour, alpha=0.2, linewidth=0)
        threshold = [2 / lr if lr > 0 else np.nan for lr in result.learning_rates]
        if np.isfinite(threshold).any():
            axis.plot(result.steps, threshold, linestyle="--", linewidth=1, color=colour, alpha=0.6)
            thresholds.append(np.nanmin(threshold))
        values += [v for v in result.lambda_1 if v > 0]
    if values:
        # the lambda_1 curves set the view; 2/lr is drawn as far as it is near them (a decaying
        # learning rate sends it off to infinity)
        top = max(max(values), min(thresholds, default=0.0))
        log = top > 10 * min(values)
        if log:
            axis.set_yscale("log")
        axis.set_ylim(min(values) / 1.5 if log else 0, top * (2 if log else 1.15))
    axis.set_xlabel("training step")
    axis.set_ylabel(r"$\lambda_1$ of the training loss")
    axis.set_title(r"band: $\pm\|Hy-\theta y\|$, where an eigenvalue lies; dashed: $2/\mathrm{lr}$ "
                   "(edge of stability of gradient descent)", fontsize=8)
    axis.legend(fontsize=7)
    figure.tight_layout()
    return figure
