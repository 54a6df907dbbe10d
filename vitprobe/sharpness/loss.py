"""The loss whose curvature is measured: mean loss over a fixed set of images, in eval mode.

Every sharpness quantity here is about L(w) = (1/N) sum_i loss(f(x_i; w), y_i) over all N images
(a batch contributes ``n_b`` times its mean loss), with BatchNorm running statistics, no dropout or
drop-path, and timm attention on the math path so second derivatives exist on every device.
Under ``torchrun`` each rank evaluates its shard of the batches and the sums are all-reduced.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from vitprobe import distributed
from vitprobe.data.batches import Batch, Batches
from vitprobe.errors import require_finite
from vitprobe.models.attention_path import math_attention
from vitprobe.models.module_state import eval_mode, module_device
from vitprobe.models.outputs import check_labels, logits
from vitprobe.sharpness.vectors import unflatten

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def cross_entropy(outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The default loss: mean cross-entropy of the logits (no label smoothing, no weight decay)."""
    scores = logits(outputs)
    check_labels(scores, labels)
    return F.cross_entropy(scores, labels)


@contextmanager
def analysis_mode(module: nn.Module) -> Iterator[None]:
    """Eval mode and math-path attention for the block; every training flag is put back."""
    with eval_mode(module), math_attention(module):
        yield


def checked(loss: torch.Tensor, where: str = "") -> torch.Tensor:
    """``loss`` if finite; a non-finite loss is the user's problem (bad weights or data)."""
    if not bool(torch.isfinite(loss.detach()).all()):
        require_finite(float(loss.detach().item()), where=where)
    return loss


def batch_loss(module: nn.Module, batch: Batch, loss_fn: LossFn, device: torch.device) -> torch.Tensor:
    """The mean loss of one batch (graph kept, so it can be differentiated)."""
    images, labels = batch
    loss = loss_fn(module(images.to(device)), labels.to(device))
    return checked(loss, " on a batch")


def local_share(batches: Batches | Sequence[Batch]) -> list[Batch]:
    """This rank's batches; with fewer batches than ranks the images are re-split first, so every
    rank gets work and the weighting by batch size keeps the result exact."""
    world = distributed.world_size()
    if world > 1 and len(batches) < world:
        batches = Batches(list(batches)).rebatch(-(-Batches(list(batches)).num_images // world))
    return distributed.shard(list(batches))


def mean_loss_and_grad(module: nn.Module, batches: Sequence[Batch], params: Sequence[torch.Tensor],
                       loss_fn: LossFn, num_images: int, with_grad: bool = True,
                       reduce: bool = True) -> tuple[float, list[torch.Tensor] | None]:
    """Mean loss over ``batches`` (weighted by batch size) and, if asked, its gradient.

    With ``reduce`` the sums are all-reduced over ranks (``batches`` being this rank's share) and
    divided by the global ``num_images``.
    """
    device = module_device(module)
    total = torch.zeros((), dtype=torch.float64, device=device)
    grads = [torch.zeros_like(p) for p in params] if with_grad else []
    with analysis_mode(module):
        for batch in batches:
            n = int(batch[0].shape[0])
            with torch.set_grad_enabled(with_grad):
                loss = batch_loss(module, batch, loss_fn, device)
            total += loss.detach().double() * n
            if with_grad:
                parts = torch.autograd.grad(loss * n, params, allow_unused=True)
                for g, part in zip(grads, parts):
                    if part is not None:
                        g += part
    if reduce and distributed.is_distributed():
        # one all-reduce for the loss and every gradient
        flat = distributed.all_reduce_sum(torch.cat([total.reshape(1).to(params[0].dtype),
                                                     *(g.reshape(-1) for g in grads)]))
        total = flat[0].double()
        if with_grad:
            grads = unflatten(flat[1:], params)
    value = require_finite(float(total) / num_images)
    return value, [g / num_images for g in grads] if with_grad else None
