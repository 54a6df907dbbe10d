"""``keskar_sharpness``: the epsilon-sharpness of Keskar, Mudigere, Nocedal, Smelyanskiy & Tang (2017).

Their definition (section 2.2.2, eq. 3-4): for weights x, loss f, epsilon > 0 and A in R^{n x p},

    C_eps = { z in R^p : -eps (|(A^+ x)_i| + 1) <= z_i <= eps (|(A^+ x)_i| + 1), i = 1..p }
    phi_{x,f}(eps, A) = (max_{y in C_eps} f(x + A y) - f(x)) / (1 + f(x)) * 100

with A^+ the pseudo-inverse; A = I (the full space, the paper's default) unless a random subspace
of dimension p is asked for (the paper uses p = 100 and a random A). The paper solves the inner
maximisation inexactly with 10 iterations of L-BFGS-B and reports eps = 1e-3 and 5e-4; so do we
(scipy's L-BFGS-B on -f, with the gradient from autograd), keeping the largest f evaluated.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from scipy.optimize import Bounds, minimize
from torch import nn

from vitprobe.data.batches import DataLike, as_batches
from vitprobe.errors import UserError
from vitprobe.models.loaded import LoadedModel, as_loaded
from vitprobe.sharpness.loss import LossFn, cross_entropy, local_share, mean_loss_and_grad
from vitprobe.sharpness.results import KeskarResult
from vitprobe.sharpness.spectrum import describe
from vitprobe.sharpness.vectors import ParamFilter, flatten, perturbed, select_parameters, set_values, unflatten


def keskar_sharpness(model: nn.Module | LoadedModel, data: DataLike, epsilon: float = 1e-3,
                     subspace_dim: int | None = None, max_iter: int = 10, params: ParamFilter = None,
                     loss_fn: LossFn | None = None, seed: int = 0) -> KeskarResult:
    """Keskar et al.'s sharpness in percent: full space (A = I) by default, or a random
    ``subspace_dim``-dimensional subspace (A with standard normal entries). The model's weights are
    restored bit for bit afterwards."""
    if epsilon <= 0 or max_iter < 1 or (subspace_dim is not None and subspace_dim < 1):
        raise UserError(f"need epsilon > 0, max_iter >= 1, subspace_dim >= 1 "
                        f"(got {epsilon}, {max_iter}, {subspace_dim})")
    loaded = as_loaded(model)
    module = loaded.module
    started = time.perf_counter()
    batches = as_batches(data)
    shard = local_share(batches)
    named = select_parameters(module, params)
    weights = [p for _, p in named]
    x = flatten([p.detach() for p in weights]).double()
    if subspace_dim is None:
        a, coordinates = None, x
    else:
        generator = torch.Generator().manual_seed(seed)
        a = torch.randn(x.numel(), subspace_dim, generator=generator, dtype=torch.float64).to(x.device)
        coordinates = torch.linalg.lstsq(a, x.unsqueeze(1)).solution.squeeze(1)  # A^+ x
    half_width = (epsilon * (coordinates.abs() + 1)).cpu().numpy()
    evaluations = [0]
    best = [-np.inf]

    def negative_loss(y: np.ndarray) -> tuple[float, np.ndarray]:
        step = torch.from_numpy(y).to(x)
        shift = step if a is None else a @ step
        set_values(weights, unflatten((x + shift).to(weights[0].dtype), weights))
        value, grads = mean_loss_and_grad(module, shard, weights, loss_fn or cross_entropy,
                                          batches.num_images)
        evaluations[0] += 1
        best[0] = max(best[0], value)
        g = flatten(grads).double()
        g = g if a is None else a.T @ g
        return -value, -g.cpu().numpy()

    with perturbed(weights):
        loss, _ = negative_loss(np.zeros(len(half_width)))
        loss = -loss
        minimize(negative_loss, np.zeros(len(half_width)), jac=True, method="L-BFGS-B",
                 bounds=Bounds(-half_width, half_width), options={"maxiter": max_iter})
    sharpness = (best[0] - loss) / (1 + loss) * 100
    return KeskarResult(
        model=loaded.label, seconds=time.perf_counter() - started, num_images=batches.num_images,
        num_params=x.numel(), params=describe(params), epsilon=epsilon, sharpness=sharpness,
        loss=loss, max_loss=best[0], subspace_dim=subspace_dim, evaluations=evaluations[0])
