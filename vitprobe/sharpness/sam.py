"""``sam_sharpness``: the sharpness that SAM minimises (Foret, Kleiner, Mobahi & Neyshabur 2020).

S_rho(w) = max over ||T^-1 eps||_2 <= rho of L(w + eps) - L(w). ``adaptive=False``: T = I (SAM).
``adaptive=True``: T = diag(|w| + eta), the scale-invariant ball of ASAM (Kwon, Kim, Park & Choi
2021), applied as SamsungLabs' reference code applies it: to parameters whose name contains
``weight`` only; biases, ``pos_embed`` and ``cls_token`` keep T = 1 (``adaptive_scope="all"``
scales every parameter instead). One step of ascent gives eps = rho T^2 g / ||T g|| (Foret et al., eq. 2; Kwon et al., eq. 7).
More steps repeat
that step from the perturbed point, eps_{t+1} = rho T^2 g(w + eps_t) / ||T g(w + eps_t)||: projected
gradient ascent with an unbounded step (the ball's linear maximisation oracle), which raises the loss
monotonically when L is convex in the ball; the largest loss met is kept, a lower bound of the
maximum that only grows with the steps. m-sharpness (Foret et al., section 4.1): the maximum is taken separately on each
micro-batch of m images and the results are averaged over images. The model's weights are restored
bit for bit afterwards.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from vitprobe import distributed
from vitprobe.data.batches import Batch, DataLike, as_batches
from vitprobe.errors import UserError
from vitprobe.models.loaded import LoadedModel, as_loaded
from vitprobe.result import analysis
from vitprobe.sharpness.loss import LossFn, cross_entropy, local_share, mean_loss_and_grad
from vitprobe.sharpness.results import SamResult
from vitprobe.sharpness.vectors import ParamFilter, filter_label, perturbed, select_parameters, set_values


def _norm(tensors: Sequence[torch.Tensor]) -> float:
    return math.sqrt(sum(float(t.double().pow(2).sum()) for t in tensors))


class _Ascent:
    """Maximises L over the ball ||T^-1 eps|| <= rho on one group of batches."""

    def __init__(self, module: nn.Module, params: list[nn.Parameter], batches: Sequence[Batch],
                 loss_fn: LossFn, num_images: int, reduce: bool, scale: list[torch.Tensor] | None) -> None:
        self.module, self.params, self.batches = module, params, batches
        self.loss_fn, self.num_images, self.reduce = loss_fn, num_images, reduce
        self.origin = [p.detach().clone() for p in params]
        self.scale = scale or [torch.ones_like(p) for p in params]
        self.loss, self.grad = self._evaluate(None, with_grad=True)

    def _evaluate(self, delta: list[torch.Tensor] | None, with_grad: bool):
        """Loss (and gradient) at w + T delta."""
        if delta is not None:
            set_values(self.params, [w + t * d for w, t, d in zip(self.origin, self.scale, delta)])
        return mean_loss_and_grad(self.module, self.batches, self.params, self.loss_fn,
                                  self.num_images, with_grad=with_grad, reduce=self.reduce)

    def maximise(self, rho: float, steps: int) -> float:
        """The largest loss found in the ball of radius ``rho`` (weights left perturbed)."""
        if rho == 0:
            return self.loss
        grad, best = self.grad, self.loss
        for t in range(steps):
            direction = [s * g for s, g in zip(self.scale, grad)]  # gradient with respect to delta
            length = _norm(direction)
            if length == 0:
                break
            delta = [rho / length * d for d in direction]
            loss, grad = self._evaluate(delta, with_grad=t < steps - 1)
            best = max(best, loss)
        return best


@analysis
def sam_sharpness(model: nn.Module | LoadedModel, data: DataLike, *, rho: float | Sequence[float] = 0.05,
                  ascent_steps: int = 1, adaptive: bool = False, m: int | None = None, eta: float = 0.01,
                  adaptive_scope: str = "weights", params: ParamFilter = None,
                  loss_fn: LossFn | None = None) -> SamResult:
    """SAM sharpness max_{||T^-1 eps|| <= rho} L(w + eps) - L(w) for each radius in ``rho``.

    ``ascent_steps``: gradient ascent steps (1 is SAM's own first-order solution). ``adaptive``: ASAM's ball with
    T = |w| + ``eta`` on the parameters named ``*weight*`` (``adaptive_scope="weights"``, the
    reference) or on all (``"all"``). ``m``: micro-batch size for m-sharpness (None: one maximum over all images).
    Under ``torchrun`` the batches (or micro-batches) are sharded and the sums all-reduced.
    """
    if adaptive_scope not in ("weights", "all"):
        raise UserError(f"adaptive_scope must be 'weights' or 'all', got {adaptive_scope!r}")
    rhos = np.atleast_1d(np.asarray(rho, dtype=float))
    if (rhos < 0).any() or not np.isfinite(rhos).all() or ascent_steps < 1 or (m is not None and m < 1):
        raise UserError(f"need rho >= 0, ascent_steps >= 1 and m >= 1 "
                         f"(got rho={list(rhos)}, ascent_steps={ascent_steps}, m={m})")
    loaded = as_loaded(model)
    module = loaded.module
    batches = as_batches(data)
    named = select_parameters(module, params)
    weights = [p for _, p in named]
    scale = [p.detach().abs() + eta if adaptive_scope == "all" or "weight" in name else torch.ones_like(p)
             for name, p in named] if adaptive else None
    loss_fn = loss_fn or cross_entropy
    if m is None:
        groups, reduce = [local_share(batches)], True
    else:
        groups, reduce = [[b] for b in distributed.shard(list(batches.rebatch(m)))], False
    totals = np.zeros(1 + len(rhos))  # image-weighted sums: the loss, then the perturbed loss per rho
    with perturbed(weights):
        for group in groups:
            size = sum(int(b[0].shape[0]) for b in group)
            ascent = _Ascent(module, weights, group, loss_fn, batches.num_images if reduce else size,
                             reduce, scale)
            weight = 1.0 if reduce else size
            totals[0] += weight * ascent.loss
            for i, r in enumerate(rhos):
                totals[1 + i] += weight * ascent.maximise(float(r), ascent_steps)
                set_values(weights, ascent.origin)
    if not reduce:
        totals = distributed.all_reduce_sum(torch.from_numpy(totals)).numpy() / batches.num_images
    loss, perturbed_loss = float(totals[0]), totals[1:1 + len(rhos)]
    return SamResult(
        model=loaded.label, images=batches.num_images,
        parameters=sum(p.numel() for p in weights), params=filter_label(params), rhos=rhos,
        sharpness=perturbed_loss - loss, perturbed_loss=perturbed_loss, loss=loss,
        ascent_steps=ascent_steps, adaptive=adaptive, m=m)
