"""``loss_landscape``: 1-D and 2-D loss slices (Li, Xu, Taylor, Studer & Goldstein 2018)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import torch
from torch import nn

from vitprobe import distributed
from vitprobe.data.batches import Batches, DataLike, as_batches
from vitprobe.errors import UserError, require_finite
from vitprobe.landscape.directions import (
    Direction,
    checkpoint_direction,
    eigen_directions,
    orthogonalize,
    random_direction,
)
from vitprobe.landscape.evaluate import LossFn, WeightSpace, evaluate, recalibrate_batchnorm
from vitprobe.landscape.grid import Grid, GridLike, SpanLike
from vitprobe.landscape.result import LandscapeResult
from vitprobe.landscape.schedule import claims, gather
from vitprobe.landscape.store import Values
from vitprobe.models.loaded import LoadedModel, as_loaded
from vitprobe.models.module_state import eval_mode, module_device
from vitprobe.progress import log, progress
from vitprobe.result import analysis

DirectionKind = Literal["random", "eigen", "interpolate"]
BNStats = Literal["keep", "interpolate", "recalibrate"]
PointCallback = Callable[[int, float, float, float, float], None]
KINDS = ("random", "eigen", "interpolate")
BN_STATS = ("keep", "interpolate", "recalibrate")


@analysis
def loss_landscape(
    model: nn.Module | LoadedModel,
    data: DataLike,
    *,
    directions: DirectionKind = "random",
    grid: GridLike = (51, 51),
    span: SpanLike = (-1, 1),
    beta_span: SpanLike | None = None,
    to: nn.Module | LoadedModel | None = None,
    seed: int = 0,
    include_bn: bool = False,
    bn_stats: BNStats | None = None,
    loss_fn: LossFn | None = None,
    points: Sequence[int] | None = None,
    known: Values | None = None,
    on_point: PointCallback | None = None,
) -> LandscapeResult:
    """Loss and accuracy of ``model`` on ``data`` at theta0 + alpha * d1 + beta * d2.

    Li et al. 2018, "Visualizing the Loss Landscape of Neural Nets". ``directions``:

    - ``"random"``: Gaussian directions, filter-normalised per output filter; biases and
      normalisation parameters zeroed unless ``include_bn`` (rules in
      :mod:`vitprobe.landscape.directions`). Drawn from ``seed``.
    - ``"eigen"``: the top one or two Hessian eigenvectors (unit norm) of the mean loss,
      from :func:`vitprobe.sharpness.hessian_spectrum`.
    - ``"interpolate"``: d1 = theta(``to``) - theta(model), so alpha = 1 is the ``to``
      checkpoint; a 2-D grid adds a random filter-normalised d2.

    In 2-D, d2 is orthogonalised against d1 after normalisation; ``result.cosine`` is their
    cosine before. ``grid`` is ``(alphas, betas)`` counts, or one count for a 1-D slice;
    ``span`` and ``beta_span`` are ``(low, high)`` or a radius. Surfaces have shape
    ``[len(betas), len(alphas)]`` (rows beta, columns alpha; see :mod:`vitprobe.landscape.grid`).

    ``bn_stats`` says what BatchNorm running statistics are at each point: ``"keep"``
    (theta0's; the default except for interpolation), ``"interpolate"`` (along the line
    between the two checkpoints; the default for interpolation) or ``"recalibrate"``
    (recomputed on ``data`` at every point, one extra forward pass per point).

    The loss is the mean over images (cross-entropy, or ``loss_fn(outputs, labels)`` returning a
    batch mean), in eval mode under ``torch.inference_mode``. The model's parameters, buffers
    and train/eval flags are restored exactly afterwards, even on an exception.

    ``points`` (row-major point numbers; default all) are the points to compute, and ``known``
    the values of points computed before, which are not computed again; points in neither are
    NaN in the surfaces. Under ``torchrun`` the ranks share the points dynamically and every
    rank gets the whole result. ``on_point(k, alpha, beta, loss, accuracy)`` is called after
    each computed point. Part files, resuming and shards are :func:`resumable_landscape`'s.
    """
    # as_loaded puts a plain module in eval mode: take the flags before it runs
    modules = [m.module if isinstance(m, LoadedModel) else m for m in (model, to) if m is not None]
    with eval_mode(*modules):
        return _landscape(as_loaded(model), as_batches(data), directions, Grid.make(grid, span, beta_span),
                          to=to, seed=seed, include_bn=include_bn, bn_stats=bn_stats, loss_fn=loss_fn,
                          points=points, known=known or {}, on_point=on_point)


def landscape_label(model: nn.Module | LoadedModel, to: nn.Module | LoadedModel | None) -> str:
    """The label of a landscape: the model's, or ``model->to`` for an interpolation."""
    label = as_loaded(model).label
    return label if to is None else f"{label}->{as_loaded(to).label}"


def _landscape(loaded: LoadedModel, batches: Batches, kind: str, axes: Grid, *, to, seed: int,
               include_bn: bool, bn_stats: str | None, loss_fn: LossFn | None,
               points: Sequence[int] | None, known: Values,
               on_point: PointCallback | None) -> LandscapeResult:
    module = loaded.module
    device = module_device(module)
    if batches[0][0].device != device:
        batches = batches.to(device)
    bn_stats = resolve_bn_stats(kind, bn_stats, to)
    require_finite(evaluate(module, batches, loss_fn)[0], where=f" at {loaded.label}'s own weights")
    target = as_loaded(to) if to is not None else None
    label = landscape_label(loaded, target)

    first, second, info = _directions(kind, loaded, batches, axes, seed, include_bn, target, loss_fn)
    moving = dict(first)
    if kind == "interpolate" and bn_stats == "interpolate":
        moving.update(info.pop("buffer_delta"))
    info.pop("buffer_delta", None)
    cosine = info.pop("cosine", None)

    done = {k: value for k, value in known.items() if 0 <= k < axes.size}
    todo = [k for k in (range(axes.size) if points is None else points) if k not in done]
    if distributed.is_main():
        log(f"landscape {label}: {axes.describe()}; {len(todo)} points to compute, {len(done)} already done")

    computed: Values = {}
    space = WeightSpace(module, moving, second)
    with space.active():
        total = None if distributed.is_distributed() else len(todo)
        for k in progress(claims(todo, label), desc=f"landscape {label}", total=total):
            _, _, alpha, beta = axes.point(k)
            space.set(alpha, beta)
            if bn_stats == "recalibrate":
                recalibrate_batchnorm(module, batches)
            loss, accuracy = evaluate(module, batches, loss_fn)
            computed[k] = (loss, accuracy)
            if on_point is not None:
                on_point(k, alpha, beta, loss, accuracy)

    values = {**done, **gather(computed)}
    losses, accuracies = np.full(axes.shape, np.nan), np.full(axes.shape, np.nan)
    for k, (point_loss, point_accuracy) in values.items():
        row, column, _, _ = axes.point(k)
        losses[row, column], accuracies[row, column] = point_loss, point_accuracy
    info.update(bn_stats=bn_stats, include_bn=include_bn, seed=seed, computed=len(computed),
                reused=len(done), missing=axes.size - len(values), images=batches.num_images)
    directions = [{n: t.detach().cpu() for n, t in d.items()} for d in (first, second) if d is not None]
    asked = {"points": len(todo) + len(done), "known": len(done)}  # counts, not the values themselves
    return LandscapeResult(model=label, images=batches.num_images, kind=kind, alphas=axes.alphas,
                           betas=axes.betas, loss=losses, accuracy=accuracies, directions=directions,
                           cosine=cosine, info=info, options=asked)


def resolve_bn_stats(kind: str, bn_stats: str | None, to) -> str:
    """The BatchNorm policy a landscape runs with (``bn_stats`` or its default for ``kind``),
    after checking that ``kind``, ``bn_stats`` and ``to`` fit together."""
    if kind not in KINDS:
        raise UserError(f"directions must be one of {', '.join(KINDS)}, got {kind!r}")
    if (kind == "interpolate") != (to is not None):
        raise UserError("interpolate directions need the second checkpoint (to=), and only they take one")
    bn_stats = bn_stats or ("interpolate" if kind == "interpolate" else "keep")
    if bn_stats not in BN_STATS:
        raise UserError(f"bn_stats must be one of {', '.join(BN_STATS)}, got {bn_stats!r}")
    if bn_stats == "interpolate" and kind != "interpolate":
        raise UserError("bn_stats='interpolate' needs directions='interpolate' (there is no second "
                        "checkpoint to interpolate towards); use keep or recalibrate")
    return bn_stats


def _directions(kind: str, loaded: LoadedModel, batches: Batches, axes: Grid, seed: int, include_bn: bool,
                target: LoadedModel | None, loss_fn: LossFn | None) -> tuple[Direction, Direction | None, dict]:
    module = loaded.module
    generator = torch.Generator().manual_seed(seed)
    info: dict = {}
    if kind == "eigen":
        vectors, eigenvalues = eigen_directions(loaded, batches, k=2 if axes.two_d else 1, loss_fn=loss_fn,
                                                seed=seed)
        if len(vectors) < (2 if axes.two_d else 1):
            raise UserError("the sharpness engine returned fewer Hessian eigenvectors than the grid needs")
        first, second = vectors[0], (vectors[1] if axes.two_d else None)
        info["eigenvalues"] = eigenvalues
    elif kind == "interpolate":
        if target is None:
            raise UserError("directions='interpolate' needs to=, the model to interpolate towards")
        first, info["buffer_delta"] = checkpoint_direction(module, target.module)
        second = random_direction(module, generator, include_bn) if axes.two_d else None
    else:
        first = random_direction(module, generator, include_bn)
        second = random_direction(module, generator, include_bn) if axes.two_d else None
    if second is not None:
        second, info["cosine"] = orthogonalize(first, second)
    return first, second, info
