"""Power iteration with deflation: the baseline eigen-solver (what PyHessian does).

Power iteration converges at rate |lambda_2 / lambda_1| to the eigenvalue of largest *magnitude*, not
the largest algebraic one: on a Hessian with a large negative eigenvalue it returns that one, and
with deflation (each new vector kept orthogonal to those found) a negative eigenvalue can come back
as "the second largest". Here every vector stops on its residual ||H v - theta v|| / |theta| < tol,
not on the relative change of theta (PyHessian's rule, which stops early when eigenvalues are close).
"""

from __future__ import annotations

import numpy as np
import torch

from vitprobe.sharpness.lanczos import Eigenpairs, SymmetricOperator, products
from vitprobe.sharpness.vectors import dot, norm


def power_top(operator: SymmetricOperator, k: int, tol: float, max_iter: int, seed: int = 0) -> Eigenpairs:
    """k eigenpairs of largest magnitude, one after another; ``max_iter`` products per eigenvalue."""
    size, dtype, device, matvec = operator.shape[0], operator.dtype, operator.device, products(operator)
    if not 1 <= k <= size:
        raise ValueError(f"k must be between 1 and the operator size {size}, got {k}")
    generator = torch.Generator().manual_seed(seed)
    found: list[torch.Tensor] = []
    values, residuals, hvps = [], [], []
    converged, total = True, 0

    def deflate(v: torch.Tensor) -> torch.Tensor:
        for u in found:
            v = v - torch.dot(u, v) * u
        return v / torch.linalg.vector_norm(v)

    for _ in range(k):
        v = deflate(torch.randn(size, generator=generator, dtype=torch.float64).to(device=device, dtype=dtype))
        for step in range(1, max_iter + 1):
            w = matvec(v)
            total += 1
            theta = dot(w, v)
            residual = norm(w - theta * v) / max(abs(theta), 1e-300)
            if residual < tol or step == max_iter:
                converged &= residual < tol
                break
            v = deflate(w)
        found.append(v)
        values.append(theta)
        residuals.append(residual)
        hvps.append(total)
    return Eigenpairs(np.array(values), torch.stack(found), np.array(residuals), np.array(hvps),
                      total, converged)
