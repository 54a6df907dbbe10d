"""Sharpness-Aware Minimization as an optimizer wrapper (Foret, Kleiner, Mobahi & Neyshabur 2020).

One SAM step: take the gradient g at w, move to w + e with e = rho g / ||g|| (adaptive
ASAM, Kwon et al. 2021: e = rho T^2 g / ||T g|| with T = |w|), take the gradient there,
restore w, and step the base optimizer with that second gradient. BatchNorm running
statistics are updated by the first forward only (see :func:`frozen_batchnorm_stats`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn


class SAM(torch.optim.Optimizer):
    """Wrap ``base_optimizer`` (a class) so that ``step(closure)`` performs one SAM update.

    ``closure`` must zero the gradients, compute the loss, call ``backward()`` and return
    the loss; it is called once at the perturbed weights. The gradient at the unperturbed
    weights must already be in ``.grad`` when ``step`` is called (the usual
    ``loss.backward(); optimizer.step(closure)`` pattern).
    """

    def __init__(self, params, base_optimizer: type[torch.optim.Optimizer], rho: float = 0.05,
                 adaptive: bool = False, **kwargs) -> None:
        if rho < 0:
            raise ValueError(f"rho must be non-negative, got {rho}")
        super().__init__(params, dict(rho=rho, adaptive=adaptive, **kwargs))
        self.base_optimizer = base_optimizer(self.param_groups, **kwargs)
        self.param_groups = self.base_optimizer.param_groups

    @torch.no_grad()
    def _grad_norm(self) -> torch.Tensor:
        norms = [((p.abs() if group["adaptive"] else 1.0) * p.grad).norm(p=2)
                 for group in self.param_groups for p in group["params"] if p.grad is not None]
        return torch.norm(torch.stack(norms), p=2)

    @torch.no_grad()
    def first_step(self) -> None:
        """Move every parameter to w + e, the one-step ascent point of radius rho."""
        scale_base = 1.0 / (self._grad_norm() + 1e-12)
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                e = (p.square() if group["adaptive"] else 1.0) * p.grad * group["rho"] * scale_base
                p.add_(e)
                self.state[p]["e"] = e

    @torch.no_grad()
    def second_step(self) -> None:
        """Restore w and step the base optimizer with the gradient taken at w + e."""
        for group in self.param_groups:
            for p in group["params"]:
                if "e" in self.state[p]:
                    p.sub_(self.state[p].pop("e"))
        self.base_optimizer.step()

    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> None:  # type: ignore[override]
        if closure is None:
            raise ValueError("SAM needs a closure that recomputes the loss and its gradient")
        self.first_step()
        with torch.enable_grad():
            closure()
        self.second_step()


@contextmanager
def frozen_batchnorm_stats(model: nn.Module) -> Iterator[None]:
    """Keep BatchNorm running statistics unchanged (SAM's second forward must not update them)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    try:
        for m in norms:
            m.momentum = 0.0
        yield
    finally:
        for m, momentum in zip(norms, saved):
            m.momentum = momentum
