"""``keskar_sharpness``: the epsilon-sharpness of Keskar, Mudigere, Nocedal, Smelyanskiy & Tang (2017).

Their definition (section 2.2.2, eq. 3-4): for weights x, loss f, epsilon > 0 and A in R^{n x p},

    C_eps = { z in R^p : -eps (|(A^+ x)_i| + 1) <= z_i <= eps (|(A^+ x)_i| + 1), i = 1..p }
    phi_{x,f}(eps, A) = (max_{y in C_eps} f(x + A y) - f(x)) / (1 + f(x)) * 100

with A^+ the pseudo-inverse; A = I (the full space, the paper's default) unless a random subspace
of dimension p is asked for (the paper uses p = 100 and a random A). The paper solves the inner
maximisation inexactly with 10 iterations of L-BFGS-B and reports eps = 1e-3 and 5e-4.

Where this departs from a literal reading, and why: started at the box centre y = 0, where the
gradient of a converged model is tiny, scipy's L-BFGS-B stops before its first iteration (its
``pgtol``/``factr`` tests) or takes a first step of length ~||g|| that leaves a float32 loss
unchanged, and reports 0 whatever the geometry. So the ascent starts *inside* the box:
``start="corner"`` (default) at the sign corner y = h sign(g), the box's linear maximiser, or
``start="random"`` at a seeded uniform point; scipy's stopping tests are off, so the iterations
asked for are run. ``method="projected"`` is projected sign ascent instead (y <- clip(y + h sign(g)),
the box's steepest ascent step). The largest loss evaluated is kept, and the result records the
iterations, scipy's termination message and whether the maximum is the start.

For a subspace, A (n x p, standard normal) is never stored: its rows are generated in seeded
chunks for every product (A y, A^T g, A^T A and A^T x for A^+ x = (A^T A)^-1 A^T x).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from scipy.optimize import Bounds, minimize
from torch import nn

from vitprobe.data.batches import DataLike, as_batches
from vitprobe.errors import UserError
from vitprobe.models.loaded import LoadedModel, as_loaded
from vitprobe.progress import warn
from vitprobe.result import analysis
from vitprobe.sharpness.loss import LossFn, cross_entropy, local_share, mean_loss_and_grad
from vitprobe.sharpness.results import KeskarResult
from vitprobe.sharpness.vectors import (
    ParamFilter,
    filter_label,
    flatten,
    perturbed,
    select_parameters,
    set_values,
    unflatten,
)

KESKAR_METHODS = ("lbfgsb", "projected")
KESKAR_STARTS = ("corner", "random", "centre")
CHUNK_ROWS = 1 << 16


class RandomSubspace:
    """A = (a_ij) with standard normal entries, n x p, regenerated in seeded chunks of rows."""

    def __init__(self, n: int, p: int, seed: int, device: torch.device) -> None:
        self.n, self.p, self.seed, self.device = n, p, seed, device

    def _chunks(self) -> Iterator[tuple[slice, torch.Tensor]]:
        for index, start in enumerate(range(0, self.n, CHUNK_ROWS)):
            rows = min(CHUNK_ROWS, self.n - start)
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
            block = torch.randn(rows, self.p, generator=generator, dtype=torch.float64)
            yield slice(start, start + rows), block.to(self.device)

    def times(self, y: torch.Tensor) -> torch.Tensor:
        """A y, (n,)."""
        out = torch.empty(self.n, dtype=torch.float64, device=self.device)
        for rows, block in self._chunks():
            out[rows] = block @ y
        return out

    def transposed_times(self, g: torch.Tensor) -> torch.Tensor:
        """A^T g, (p,)."""
        return torch.stack([block.T @ g[rows] for rows, block in self._chunks()]).sum(0)

    def pseudo_inverse_times(self, x: torch.Tensor) -> torch.Tensor:
        """A^+ x = (A^T A)^-1 A^T x (A has full column rank almost surely)."""
        gram = sum(block.T @ block for _, block in self._chunks())
        return torch.linalg.solve(gram, self.transposed_times(x))


@analysis
def keskar_sharpness(model: nn.Module | LoadedModel, data: DataLike, *, epsilon: float = 1e-3,
                     subspace_dim: int | None = None, max_iter: int = 10, method: str = "lbfgsb",
                     start: str = "corner", params: ParamFilter = None, loss_fn: LossFn | None = None,
                     seed: int = 0) -> KeskarResult:
    """Keskar et al.'s sharpness in percent: full space (A = I) by default, or a random
    ``subspace_dim``-dimensional subspace. ``method``: ``lbfgsb`` (the paper's, ``max_iter``
    iterations) or ``projected`` (``max_iter`` steps of projected sign ascent). ``start``:
    ``corner`` (the sign corner of the box), ``random`` (seeded) or ``centre`` (the literal
    reading, which reports 0 on converged models; see the module docstring). The model's
    weights are restored bit for bit afterwards."""
    if not (epsilon > 0 and np.isfinite(epsilon)) or max_iter < 1 or (subspace_dim is not None and subspace_dim < 1):
        raise UserError(f"need a finite epsilon > 0, max_iter >= 1, subspace_dim >= 1 "
                        f"(got {epsilon}, {max_iter}, {subspace_dim})")
    if method not in KESKAR_METHODS or start not in KESKAR_STARTS:
        raise UserError(f"method must be one of {', '.join(KESKAR_METHODS)} and start one of "
                        f"{', '.join(KESKAR_STARTS)} (got {method!r}, {start!r})")
    loaded = as_loaded(model)
    module = loaded.module
    batches = as_batches(data)
    shard = local_share(batches)
    named = select_parameters(module, params)
    weights = [p for _, p in named]
    x = flatten([p.detach() for p in weights]).double()
    subspace = None if subspace_dim is None else RandomSubspace(x.numel(), subspace_dim, seed, x.device)
    coordinates = x if subspace is None else subspace.pseudo_inverse_times(x)
    half_width = (epsilon * (coordinates.abs() + 1)).cpu().numpy()
    best = [-np.inf]
    evaluations = [0]

    def value_and_gradient(y: np.ndarray) -> tuple[float, np.ndarray]:
        step = torch.from_numpy(y).to(x)
        shift = step if subspace is None else subspace.times(step)
        set_values(weights, unflatten((x + shift).to(weights[0].dtype), weights))
        value, grads = mean_loss_and_grad(module, shard, weights, loss_fn or cross_entropy,
                                          batches.num_images)
        evaluations[0] += 1
        best[0] = max(best[0], value)
        g = flatten(grads or []).double()
        g = g if subspace is None else subspace.transposed_times(g)
        return value, g.cpu().numpy()

    with perturbed(weights):
        loss, gradient = value_and_gradient(np.zeros(len(half_width)))
        y0 = {"centre": np.zeros_like(half_width),
              "corner": half_width * np.sign(gradient),
              "random": np.random.default_rng(seed).uniform(-half_width, half_width)}[start]
        at_start = value_and_gradient(y0)[0] if start != "centre" else loss
        if method == "lbfgsb":
            solution = minimize(lambda y: tuple(-v for v in value_and_gradient(y)), y0, jac=True,
                                method="L-BFGS-B", bounds=Bounds(-half_width, half_width),
                                options={"maxiter": max_iter, "ftol": 0.0, "gtol": 0.0})
            iterations, message = int(solution.nit), str(solution.message)
        else:
            y = y0
            for _ in range(max_iter):
                _, g = value_and_gradient(y)
                y = np.clip(y + half_width * np.sign(g), -half_width, half_width)
            value_and_gradient(y)
            iterations, message = max_iter, "projected sign ascent: all steps taken"
    if best[0] <= loss:
        warn(f"{loaded.label}: Keskar sharpness at eps={epsilon:g} is 0: no point of the box evaluated "
             f"beats f(x) (start {start}, {iterations} iterations: {message}); it is a lower bound")
    sharpness = (best[0] - loss) / (1 + loss) * 100
    return KeskarResult(
        model=loaded.label, images=batches.num_images,
        parameters=x.numel(), params=filter_label(params), epsilon=epsilon, sharpness=sharpness,
        loss=loss, max_loss=best[0], subspace_dim=subspace_dim, evaluations=evaluations[0],
        method=method, start=start, iterations=iterations, message=message,
        maximum_at_start=best[0] <= at_start)
