"""``adaptive_sharpness``: worst- and average-case adaptive sharpness (Andriushchenko, Croce,
Mueller, Hein & Flammarion, ICML 2023, "A modern look at the relationship between sharpness and
generalization").

With c = |w| elementwise (``adaptive=True``; c = 1 gives their non-adaptive sharpness) and S a
batch of m images (m-sharpness: the maximum is taken on each batch, and the batches averaged):

* worst case: E_S [ max_{||delta / c||_p <= rho} L_S(w + delta) - L_S(w) ], p = inf or 2;
* average case: E_S E_delta [ L_S(w + delta) - L_S(w) ] with delta = rho c z, z ~ N(0, I) for
  ``norm="l2"`` and U[-1, 1] entrywise for ``norm="linf"``.

Every parameter is perturbed (biases and normalisation weights too), the model in eval mode, as
their ``eval_sharpness.py`` does. The maximum is found by their solver (tml-epfl/
sharpness-vs-generalization, ``sharpness.py``, ``eval_APGD_sharpness``): auto-PGD in weight space
from delta = 0 for ``steps`` = 20 iterations; a step of length ``size`` in u = delta / c along
sign(g) (linf: delta += size sign(g) c), the projection on the ball (a clamp to [-rho c, rho c]),
then the average 0.75 z + 0.25 delta_{k-1} of the projected point z with the iterate before
the current one (their code; its docstring writes auto-PGD's momentum, which it does not compute). The step size starts at 2 rho and is halved at
checkpoints 0.22 n, 0.41 n, ... (their schedule) when fewer than 75% of the iterations since the
last checkpoint raised the loss, or neither the step nor the best loss changed. Their defaults:
m = 128 images, 20 iterations (average case: 20 draws), linf; the radius has no default there,
so ours is the middle of the range their scripts sweep for ViTs (worst linf 0.002, worst l2 1.0,
average 0.2, all adaptive).

Departures from the reference, each deliberate:

* l2: the step (size c g / ||c g|| in u) and the projection (u scaled back to length rho) are
  both taken in u, where the ball is a sphere. The reference steps along c g / ||g|| and projects
  in delta onto the ellipsoid; that pair has no fixed point at the maximum and stopped 1-3% below
  it on a quadratic whose maximum is known (97.2-99.1% for rho 0.01-0.5; linf is unaffected).
* On a step-size cut the reference reloads the best weights into the model but keeps adding
  steps to the current delta (so the next point is the current delta moved along the best
  point's gradient); here delta itself goes back to the best point, as auto-PGD (Croce & Hein
  2020) prescribes.
* The loss at each new point is computed with its gradient in one pass, not in a second forward.
* The spread is reported: the standard error and a Student-t interval over the batches (over the
  draws when the average case has one batch). Random draws come from a CPU generator seeded per
  batch, so ``torchrun`` ranks, which take every world-size-th batch, reproduce the
  single-process numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vitprobe import distributed
from vitprobe.data.batches import Batch, DataLike, as_batches
from vitprobe.errors import UserError
from vitprobe.models.loaded import LoadedModel, as_loaded
from vitprobe.models.outputs import check_labels, logits
from vitprobe.result import analysis
from vitprobe.sharpness.loss import LossFn, cross_entropy, mean_loss_and_grad
from vitprobe.sharpness.results import AdaptiveSharpnessResult
from vitprobe.sharpness.subsets import t_summary
from vitprobe.sharpness.vectors import ParamFilter, filter_label, perturbed, select_parameters, set_values

KINDS = ("worst", "average")
NORMS = ("linf", "l2")
DEFAULT_RHO = {("worst", "linf"): 0.002, ("worst", "l2"): 1.0, ("average", "linf"): 0.2,
               ("average", "l2"): 0.2}
MOMENTUM = 0.75
MIN_UPDATE_RATIO = 0.75


def normalised_cross_entropy(outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of centred logits scaled to unit norm (their ``--normalize_logits``), which
    makes the loss invariant to the scale of the last layer."""
    scores = logits(outputs)
    check_labels(scores, labels)
    centred = scores - scores.mean(dim=-1, keepdim=True)
    return F.cross_entropy(centred / centred.norm(dim=-1, keepdim=True).clamp_min(1e-10), labels)


def checkpoints(steps: int) -> set[int]:
    """The iterations at which auto-PGD may halve its step (the reference's ``version='default'``)."""
    fractions, marks = [0.0, 0.22], [0, math.ceil(steps * 0.22)]
    while marks[-1] < steps and marks[-1] != marks[-2]:
        fractions.append(fractions[-1] + max(fractions[-1] - fractions[-2] - 0.03, 0.06))
        marks.append(math.ceil(fractions[-1] * steps))
    return set(marks[1:])


def _total(tensors: Sequence[torch.Tensor]) -> float:
    return sum(float(t.double().pow(2).sum()) for t in tensors)


@dataclass
class ScaledBall:
    """The set {delta : ||delta / c||_p <= rho}, c the elementwise scale (zero where |w| = 0:
    delta stays zero there)."""

    scale: list[torch.Tensor]
    norm: str
    rho: float

    def ascent(self, grad: Sequence[torch.Tensor], size: float) -> list[torch.Tensor]:
        """A step of length ``size`` in u = delta / c along the steepest ascent of the ball's norm:
        size * sign(g) * c (linf, the reference's) or size * c^2 g / ||c g|| (l2)."""
        if self.norm == "linf":
            return [size * g.sign() * c for g, c in zip(grad, self.scale)]
        length = math.sqrt(_total([c * g for g, c in zip(grad, self.scale)])) + 1e-12
        return [size / length * c * c * g for g, c in zip(grad, self.scale)]

    def _scaled(self, delta: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [torch.where(c > 0, d / c.clamp_min(torch.finfo(c.dtype).tiny), torch.zeros_like(d))
                for d, c in zip(delta, self.scale)]

    def size(self, delta: Sequence[torch.Tensor]) -> float:
        """||delta / c||_p."""
        scaled = self._scaled(delta)
        if self.norm == "linf":
            return max(float(u.abs().max()) for u in scaled)
        return math.sqrt(_total(scaled))

    def project(self, delta: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The nearest point of the ball in u = delta / c: a clamp to [-rho c, rho c] (linf), or
        u scaled back to length rho (l2)."""
        if self.norm == "linf":
            return [torch.maximum(torch.minimum(d, self.rho * c), -self.rho * c)
                    for d, c in zip(delta, self.scale)]
        length = self.size(delta)
        if length <= self.rho:
            return list(delta)
        return [u * c * (self.rho / length) for u, c in zip(self._scaled(delta), self.scale)]

    def draw(self, generator: torch.Generator) -> list[torch.Tensor]:
        """rho c z, z standard normal (l2) or uniform on [-1, 1] (linf), drawn on the CPU."""
        noise = []
        for c in self.scale:
            z = (torch.randn(c.shape, generator=generator, dtype=torch.float64) if self.norm == "l2" else
                 2 * torch.rand(c.shape, generator=generator, dtype=torch.float64) - 1)
            noise.append(self.rho * c * z.to(c))
        return noise


class _Batch:
    """The loss of one batch of images at w + delta."""

    def __init__(self, module: nn.Module, params: list[nn.Parameter], origin: list[torch.Tensor], batch: Batch,
                 loss_fn: LossFn) -> None:
        self.module, self.params, self.origin, self.batch, self.loss_fn = module, params, origin, [batch], loss_fn
        self.images = int(batch[0].shape[0])

    def at(self, delta: Sequence[torch.Tensor] | None, with_grad: bool) -> tuple[float, list[torch.Tensor] | None]:
        set_values(self.params, self.origin if delta is None else [w + d for w, d in zip(self.origin, delta)])
        return mean_loss_and_grad(self.module, self.batch, self.params, self.loss_fn, self.images,
                                  with_grad=with_grad, reduce=False)


def worst_case(batch: _Batch, ball: ScaledBall, steps: int, start: list[torch.Tensor] | None = None) -> float:
    """The largest loss auto-PGD finds in ``ball`` around the batch's weights (their solver)."""
    delta = start if start is not None else [torch.zeros_like(w) for w in batch.origin]
    worst, grad = batch.at(None, with_grad=True)
    if start is not None:
        _, grad = batch.at(delta, with_grad=True)
    worst_delta, previous = delta, delta
    size = previous_size = 2 * ball.rho
    previous_worst, last_mark, updates = worst, 0, 0
    marks = checkpoints(steps)
    for i in range(steps):
        assert grad is not None
        moved = ball.project([d + s for d, s in zip(delta, ball.ascent(grad, size))])
        delta, previous = [MOMENTUM * d + (1 - MOMENTUM) * p for d, p in zip(moved, previous)], delta
        loss, grad = batch.at(delta, with_grad=True)
        if loss > worst:
            worst, worst_delta, updates = loss, delta, updates + 1
        if i in marks:
            too_few = updates < MIN_UPDATE_RATIO * (i - last_mark)
            stalled = previous_size == size and previous_worst == worst
            previous_size, previous_worst, last_mark, updates = size, worst, i, 0
            if too_few or stalled:
                size /= 2
                if delta is not worst_delta:
                    delta = worst_delta
                    _, grad = batch.at(delta, with_grad=True)
    return worst


def average_case(batch: _Batch, ball: ScaledBall, samples: int, generator: torch.Generator) -> np.ndarray:
    """The loss at ``samples`` random points rho c z around the batch's weights."""
    return np.array([batch.at(ball.draw(generator), with_grad=False)[0] for _ in range(samples)])


def _t_interval(values: np.ndarray, confidence: float = 0.95) -> tuple[float, float, float]:
    """(standard error, ci_low, ci_high) of the mean of ``values``."""
    _, std, low, high = t_summary(values, confidence)
    return std / math.sqrt(len(values)) if len(values) > 1 else float("nan"), low, high


@analysis
def adaptive_sharpness(model: nn.Module | LoadedModel, data: DataLike, *, rho: float | Sequence[float] | None = None,
                       kind: str = "worst", norm: str = "linf", adaptive: bool = True, m: int | None = 128,
                       steps: int = 20, samples: int = 20, random_start: bool = False,
                       normalise_logits: bool = False, params: ParamFilter = None,
                       loss_fn: LossFn | None = None, seed: int = 0) -> AdaptiveSharpnessResult:
    """Worst-case (``kind="worst"``) or average-case (``"average"``) sharpness in the ball
    ||delta / |w| ||_p <= rho (``adaptive=False``: ||delta||_p <= rho), for each radius in ``rho``
    (default: :data:`DEFAULT_RHO` for the kind and norm), on batches of ``m`` images (None: all
    images as one batch).

    ``steps``: auto-PGD iterations of the worst case; ``samples``: draws of the average case;
    ``random_start``: start the ascent from a random point (their ``--sharpness_rand_init``: rho c z,
    not projected); ``normalise_logits``: the loss on unit-norm centred logits. Under ``torchrun``
    every rank takes every world-size-th batch.
    """
    if kind not in KINDS or norm not in NORMS:
        raise UserError(f"kind must be one of {', '.join(KINDS)} and norm one of {', '.join(NORMS)} "
                        f"(got {kind!r}, {norm!r})")
    rhos = np.atleast_1d(np.asarray(DEFAULT_RHO[kind, norm] if rho is None else rho, dtype=float))
    if not (np.isfinite(rhos).all() and (rhos > 0).all()) or steps < 1 or samples < 1 or (m is not None and m < 1):
        raise UserError(f"need rho > 0, steps >= 1, samples >= 1 and m >= 1 "
                        f"(got rho={list(rhos)}, steps={steps}, samples={samples}, m={m})")
    loaded = as_loaded(model)
    batches = as_batches(data)
    module = loaded.module
    weights = [p for _, p in select_parameters(module, params)]
    loss_fn = loss_fn or (normalised_cross_entropy if normalise_logits else cross_entropy)
    groups = list(batches.rebatch(m if m is not None else batches.num_images))
    mine = distributed.shard(list(range(len(groups))))
    losses = torch.zeros(len(groups), dtype=torch.float64)  # per batch: the clean loss ...
    found = torch.zeros(len(groups), len(rhos), dtype=torch.float64)  # ... and the perturbed one
    draws = torch.zeros(len(rhos), samples, dtype=torch.float64)  # average case, one batch: per draw
    origin = [w.detach().clone() for w in weights]
    scale = [w.abs() if adaptive else torch.ones_like(w) for w in origin]
    with perturbed(weights):
        for index in mine:
            batch = _Batch(module, weights, origin, groups[index], loss_fn)
            losses[index] = batch.at(None, with_grad=False)[0]
            for j, r in enumerate(rhos):
                ball = ScaledBall(scale, norm, float(r))
                generator = torch.Generator().manual_seed(seed * 1_000_003 + index)
                if kind == "worst":
                    start = ball.draw(generator) if random_start else None
                    found[index, j] = worst_case(batch, ball, steps, start)
                else:
                    values = average_case(batch, ball, samples, generator)
                    found[index, j] = float(values.mean())
                    if len(groups) == 1:
                        draws[j] = torch.from_numpy(values - float(losses[index]))
    losses, found, draws = (distributed.all_reduce_sum(t) for t in (losses, found, draws))
    per_batch = (found - losses[:, None]).numpy()
    spread = [_t_interval(draws[j].numpy() if kind == "average" and len(groups) == 1 else per_batch[:, j])
              for j in range(len(rhos))]
    return AdaptiveSharpnessResult(
        model=loaded.label, images=batches.num_images, parameters=sum(p.numel() for p in weights),
        params=filter_label(params), rhos=rhos, kind=kind, norm=norm, adaptive=adaptive, m=m,
        steps=steps, samples=samples, sharpness=per_batch.mean(axis=0), per_batch=per_batch,
        std_error=np.array([s[0] for s in spread]), ci_low=np.array([s[1] for s in spread]),
        ci_high=np.array([s[2] for s in spread]), loss=float(losses.mean()),
        normalise_logits=normalise_logits)
