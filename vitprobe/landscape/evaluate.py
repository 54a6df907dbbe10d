"""Evaluating one landscape point: set the weights, (re)calibrate BatchNorm, measure the loss.

Every point is set from an untouched copy of the weights, w = (theta0 + b d2) + a d1, so no
error accumulates along the walk and a point's value does not depend on which points came
before it (or on which worker computed it). The row term theta0 + b d2 is computed once per
value of b (from the copy, never from the previous point), so a point costs one pass over the
weights. The centre (a = b = 0) is theta0 bit for bit.
:class:`WeightSpace` puts every parameter, buffer and training flag back on exit, whatever
ends the block (an exception or a KeyboardInterrupt included).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from vitprobe.data.batches import Batch
from vitprobe.landscape.directions import Direction
from vitprobe.models.module_state import eval_mode
from vitprobe.models.outputs import check_labels, logits

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class WeightSpace:
    """Moves ``module`` to (theta0 + b * d2) + a * d1 and back.

    ``d1`` (and ``d2``) map parameter or buffer names to tensors; names whose direction is
    zero everywhere are never written. Buffers whose name ends in ``running_var`` are clamped
    at zero (an extrapolated variance can go negative).
    """

    def __init__(self, module: nn.Module, d1: Direction, d2: Direction | None = None) -> None:
        self.module = module
        tensors: dict[str, torch.Tensor] = dict(module.named_parameters())
        tensors.update(module.named_buffers())
        self._moving: list[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]] = []
        for name, tensor in tensors.items():
            first = _nonzero(d1.get(name))
            second = _nonzero(d2.get(name)) if d2 is not None else None
            if first is not None or second is not None:
                self._moving.append((name, tensor, tensor.detach().clone(), first, second))
        self._rows: list[torch.Tensor | None] = [None] * len(self._moving)
        self._row_storage: list[torch.Tensor | None] = [None] * len(self._moving)
        self._row_beta: float | None = None
        # buffers BatchNorm recalibration may rewrite
        self._buffers = [(b, b.detach().clone()) for _, b in module.named_buffers()]

    def set(self, alpha: float, beta: float) -> None:
        """Write (theta0 + beta * d2) + alpha * d1 into the module."""
        with torch.no_grad():
            if beta != self._row_beta:
                self._set_row(beta)
            for (name, tensor, _, first, _), row in zip(self._moving, self._rows):
                assert row is not None  # _set_row filled every row
                if alpha != 0 and first is not None:
                    torch.add(row, first, alpha=alpha, out=tensor)
                else:
                    tensor.copy_(row)
                if name.endswith("running_var"):
                    tensor.clamp_(min=0)

    def _set_row(self, beta: float) -> None:
        """theta0 + beta * d2 for every moving tensor (theta0 itself where that is exact)."""
        for i, (_, _, base, _, second) in enumerate(self._moving):
            if beta == 0 or second is None:
                self._rows[i] = base
                continue
            if self._row_storage[i] is None:
                self._row_storage[i] = torch.empty_like(base)
            torch.add(base, second, alpha=beta, out=self._row_storage[i])
            self._rows[i] = self._row_storage[i]
        self._row_beta = beta

    def restore(self) -> None:
        """Put back every parameter and buffer exactly as they were."""
        with torch.no_grad():
            for _, tensor, base, _, _ in self._moving:
                tensor.copy_(base)
            for buffer, saved in self._buffers:
                buffer.copy_(saved)

    @contextmanager
    def active(self) -> Iterator[WeightSpace]:
        """The module in eval mode for the block; its weights, buffers and training flags
        restored afterwards."""
        with eval_mode(self.module):
            try:
                yield self
            finally:
                self.restore()


def _nonzero(tensor: torch.Tensor | None) -> torch.Tensor | None:
    return tensor if tensor is not None and bool(tensor.any()) else None


def recalibrate_batchnorm(module: nn.Module, batches: Sequence[Batch]) -> None:
    """Recompute every BatchNorm's running statistics on ``batches`` (cumulative average).

    Only the BatchNorm layers run in training mode (no dropout); the mean and variance are
    the average over batches of the batch statistics, as SWA's ``update_bn`` does.
    """
    layers = [m for m in module.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    if not layers:
        return
    momenta = [m.momentum for m in layers]
    try:
        for m in layers:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        with torch.inference_mode():
            for images, _ in batches:
                module(images)
    finally:
        for m, momentum in zip(layers, momenta):
            m.momentum = momentum
            m.eval()


def evaluate(module: nn.Module, batches: Sequence[Batch], loss_fn: LossFn | None = None) -> tuple[float, float]:
    """(mean loss, accuracy) over all images of ``batches``, in inference mode.

    The loss is cross-entropy on the logits (taken in float64), or ``loss_fn(outputs, labels)`` returning a
    batch mean; either way each batch counts by its number of images. Accuracy is top-1 when
    the outputs are (N, classes) logits and the labels class indices, else NaN.
    """
    losses, hits = [], []
    count, classified = 0, True
    with torch.inference_mode():
        for images, labels in batches:
            outputs = module(images)
            if loss_fn is None:
                outputs = logits(outputs)
                check_labels(outputs, labels)
            n = int(images.shape[0])
            if loss_fn is None:
                losses.append(F.cross_entropy(outputs.double(), labels, reduction="sum"))
            else:
                losses.append(loss_fn(outputs, labels).double() * n)
            classified = (classified and outputs.dim() == 2 and labels.dim() == 1
                          and not labels.is_floating_point())
            if classified:
                hits.append((outputs.argmax(dim=1) == labels).sum())
            count += n
    loss = float(torch.stack(losses).sum()) / count
    accuracy = float(torch.stack(hits).sum()) / count if classified else float("nan")
    return loss, accuracy
