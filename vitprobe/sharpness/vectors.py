"""Parameter-shaped vectors: selecting parameters, flattening, and exact perturbation."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from vitprobe.errors import UserError

ParamFilter = None | str | Callable[[str, nn.Parameter], bool]


def filter_label(params: ParamFilter) -> str:
    """How a parameter filter is written in tables: "all", the expression, or the callable's name."""
    return "all" if params is None else params if isinstance(params, str) else getattr(
        params, "__name__", "custom")


def select_parameters(module: nn.Module, params: ParamFilter = None) -> list[tuple[str, nn.Parameter]]:
    """The named parameters of ``module`` that require a gradient and pass ``params``.

    ``params`` is None (all of them), a regular expression searched in each parameter name
    (``"blocks\\.3\\."``, ``"layer4"``), or a callable ``(name, parameter) -> bool``.
    """
    if isinstance(params, str):
        try:
            pattern = re.compile(params)
        except re.error as error:
            raise UserError(f"params {params!r} is not a regular expression: {error}") from None
        keep: Callable[[str, nn.Parameter], bool] = lambda name, _: bool(pattern.search(name))
    elif params is None:
        keep = lambda name, _: True
    else:
        keep = params
    selected = [(name, p) for name, p in module.named_parameters() if p.requires_grad and keep(name, p)]
    if not selected:
        raise UserError(f"no trainable parameter of the model matches {params!r}")
    return selected


def flatten(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """One flat vector from a list of tensors (in order)."""
    return torch.cat([t.reshape(-1) for t in tensors])


def unflatten(flat: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Split a flat vector into views shaped like ``like``."""
    out, start = [], 0
    for t in like:
        out.append(flat[start:start + t.numel()].view_as(t))
        start += t.numel()
    return out


BLOCK = 1 << 16


def dot(a: torch.Tensor, b: torch.Tensor) -> float:
    """<a, b> of two flat vectors: exact products summed in blocks of 65536 in their own dtype,
    the block sums accumulated in float64, so no whole-vector float64 copy is made (the error
    is that of a 65536-term sum, not of an n-term one)."""
    if a.dtype == torch.float64:
        return float(torch.dot(a, b))
    return float(sum(torch.dot(x, y).double() for x, y in zip(a.split(BLOCK), b.split(BLOCK))))


def norm(a: torch.Tensor) -> float:
    """||a||, accumulated as :func:`dot` does."""
    return dot(a, a) ** 0.5


def rademacher(size: int, generator: torch.Generator, dtype: torch.dtype,
               device: torch.device) -> torch.Tensor:
    """A vector of independent +-1 entries, drawn on the CPU so every device and rank agrees."""
    signs = torch.randint(0, 2, (size,), generator=generator, dtype=torch.int8)
    return (signs.to(dtype) * 2 - 1).to(device)


def gaussian(size: int, generator: torch.Generator, dtype: torch.dtype,
             device: torch.device) -> torch.Tensor:
    """A standard normal vector, drawn on the CPU so every device and rank agrees."""
    return torch.randn(size, generator=generator, dtype=torch.float64).to(dtype).to(device)


@contextmanager
def perturbed(params: Sequence[torch.Tensor], delta: Sequence[torch.Tensor] | None = None) -> Iterator[None]:
    """Within the block ``params`` are ``w + delta`` (or free to be moved); afterwards they hold
    their original values bit for bit (copied back, not subtracted)."""
    saved = [p.detach().clone() for p in params]
    try:
        if delta is not None:
            set_values(params, [w + d for w, d in zip(saved, delta)])
        yield
    finally:
        set_values(params, saved)


def set_values(params: Sequence[torch.Tensor], values: Sequence[torch.Tensor]) -> None:
    """Overwrite parameters in place (no autograd record)."""
    with torch.no_grad():
        for p, value in zip(params, values):
            p.copy_(value)
