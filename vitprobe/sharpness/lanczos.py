"""Lanczos on a symmetric operator: extreme eigenpairs with a residual stopping rule, and the
tridiagonal matrices that stochastic Lanczos quadrature needs.

Lanczos (1950) builds an orthonormal Krylov basis V and the tridiagonal T = V^T H V one product at a
time; the Ritz pairs (theta, V s) of T approximate H's extreme eigenpairs far faster than power
iteration (Saad, *Numerical Methods for Large Eigenvalue Problems*, ch. 6). With full
reorthogonalisation the basis stays orthogonal to working precision, and the residual of a Ritz
pair is exact and free: ||H y - theta y|| = beta_j |s_j|.

Reorthogonalisation is one classical Gram-Schmidt pass against the whole basis, and a second
only when the first removed most of w (the test of Daniel, Gragg, Kaufman & Stewart 1976:
||w after|| < ||w before|| / sqrt 2), which in Lanczos is rare: half the cost of "twice is
enough" at the same orthogonality. The basis has the parameters' dtype, and dot products and
norms accumulate in float64 block by block (:func:`vitprobe.sharpness.vectors.dot`) without
whole-vector casts. A ``tol`` that a float32 basis cannot deliver (below 100 float32 epsilons)
switches the basis, and the recurrence, to float64; the products stay in the operator's dtype.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.linalg import eigh_tridiagonal

from vitprobe.sharpness.vectors import dot, norm

Matvec = Callable[[torch.Tensor], torch.Tensor]
CHUNK = 32
PRECISE_BELOW = 100  # a tol under this many epsilons of the operator's dtype needs a float64 basis


class _Basis:
    """The Lanczos vectors, stored in chunks so the basis grows without copying."""

    def __init__(self, size: int, dtype: torch.dtype, device: torch.device) -> None:
        self.size, self.dtype, self.device = size, dtype, device
        self.chunks: list[torch.Tensor] = []
        self.count = 0

    def append(self, v: torch.Tensor) -> None:
        if self.count % CHUNK == 0:
            self.chunks.append(torch.empty(CHUNK, self.size, dtype=self.dtype, device=self.device))
        self.chunks[-1][self.count % CHUNK] = v
        self.count += 1

    def _filled(self):
        for i, chunk in enumerate(self.chunks):
            rows = min(CHUNK, self.count - i * CHUNK)
            yield chunk[:rows]

    def project_out(self, w: torch.Tensor) -> torch.Tensor:
        """w minus its projection on the basis (one classical Gram-Schmidt pass)."""
        for block in self._filled():
            w = w - block.T @ (block @ w)
        return w

    def orthogonalise(self, w: torch.Tensor) -> torch.Tensor:
        """One pass, and a second when the first removed most of w (DGKS 1976)."""
        before = norm(w)
        w = self.project_out(w)
        return self.project_out(w) if norm(w) < before / math.sqrt(2) else w

    def combine(self, coefficients: np.ndarray) -> torch.Tensor:
        """V^T c for each column c of ``coefficients`` (count x r): the Ritz vectors, as rows."""
        c = torch.as_tensor(coefficients, dtype=self.dtype, device=self.device)
        out = torch.zeros(c.shape[1], self.size, dtype=self.dtype, device=self.device)
        start = 0
        for block in self._filled():
            rows = min(block.shape[0], c.shape[0] - start)
            if rows <= 0:
                break
            out += c[start:start + rows].T @ block[:rows]
            start += rows
        return out


@dataclass
class Lanczos:
    """A Lanczos run on ``matvec`` from ``start``; call :meth:`step` for each product.

    ``reorthogonalise=False`` keeps only the last two vectors (memory of two vectors instead of
    one per step), as the three-term recurrence needs; Ritz values then may repeat ("ghosts"),
    which is harmless for quadrature but not for counting eigenvalues.
    """

    matvec: Matvec
    start: torch.Tensor
    reorthogonalise: bool = True
    generator: torch.Generator | None = None
    alphas: list[float] = field(default_factory=list)
    betas: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        v = self.start / torch.linalg.vector_norm(self.start)
        self.size = v.numel()
        self.basis = _Basis(self.size, v.dtype, v.device) if self.reorthogonalise else None
        self._v, self._previous = v, torch.zeros_like(v)
        if self.basis is not None:
            self.basis.append(v)
        self.exhausted = False

    @property
    def steps(self) -> int:
        return len(self.alphas)

    def step(self) -> None:
        """One product: extends T by alpha_j and beta_j (the norm of the next residual)."""
        v = self._v
        w = self.matvec(v)
        alpha = dot(w, v)
        w = w - alpha * v - (self.betas[-1] if self.betas else 0.0) * self._previous
        if self.basis is not None:
            w = self.basis.orthogonalise(w)
        beta = norm(w)
        self.alphas.append(alpha)
        self.betas.append(beta)
        if self.steps >= self.size:
            self.exhausted = True
            return
        scale = max(abs(alpha), beta, *(abs(a) for a in self.alphas[-3:]))
        if beta <= 1e-10 * max(scale, 1e-30):
            # invariant subspace found: restart from a random vector orthogonal to the basis
            if self.basis is None:
                self.exhausted = True
                return
            self.betas[-1] = 0.0
            w = torch.randn(self.size, generator=self.generator, dtype=torch.float64).to(v)
            w = self.basis.orthogonalise(w)
            beta = norm(w)
        self._previous, self._v = v, w / beta
        if self.basis is not None:
            self.basis.append(self._v)

    def tridiagonal(self) -> tuple[np.ndarray, np.ndarray]:
        """Diagonal and off-diagonal of T (steps x steps)."""
        return np.asarray(self.alphas), np.asarray(self.betas[:-1])

    def ritz(self) -> tuple[np.ndarray, np.ndarray]:
        """Ritz values (ascending) and eigenvectors of T (columns)."""
        diagonal, off = self.tridiagonal()
        if len(diagonal) == 1:
            return diagonal.copy(), np.ones((1, 1))
        return eigh_tridiagonal(diagonal, off)

    def residuals(self, vectors: np.ndarray) -> np.ndarray:
        """||H y - theta y|| of the Ritz pairs whose T-eigenvectors are the columns of ``vectors``."""
        return np.abs(self.betas[-1] * vectors[-1]) if not self.exhausted else np.zeros(vectors.shape[1])


@dataclass
class Eigenpairs:
    """Top-k eigenpairs from :func:`lanczos_top`, largest first."""

    values: np.ndarray
    vectors: torch.Tensor  # (k, n)
    residuals: np.ndarray  # relative: ||H y - theta y|| / |theta|
    hvps: np.ndarray  # products spent when each pair last reached the tolerance
    total_hvps: int
    converged: bool


def _in_dtype(matvec: Matvec, dtype: torch.dtype) -> Matvec:
    """``matvec`` applied in ``dtype`` to vectors of another (float64) dtype, and back."""
    def product(v: torch.Tensor) -> torch.Tensor:
        return matvec(v.to(dtype)).to(v.dtype)
    return product


def lanczos_top(matvec: Matvec, size: int, k: int, tol: float, max_iter: int, dtype: torch.dtype,
                device: torch.device, seed: int = 0) -> Eigenpairs:
    """The k algebraically largest eigenpairs of a symmetric operator by Lanczos with full
    reorthogonalisation; stops when every wanted Ritz pair has ||H y - theta y|| / |theta| < tol.
    """
    if not 1 <= k <= size:
        raise ValueError(f"k must be between 1 and the operator size {size}, got {k}")
    generator = torch.Generator().manual_seed(seed)
    basis_dtype = torch.float64 if tol < PRECISE_BELOW * torch.finfo(dtype).eps else dtype
    start = torch.randn(size, generator=generator, dtype=torch.float64).to(device=device, dtype=basis_dtype)
    run = Lanczos(matvec if basis_dtype == dtype else _in_dtype(matvec, dtype), start,
                  reorthogonalise=True, generator=generator)
    reached: list[int | None] = [None] * k
    while True:
        run.step()
        if run.steps < k and not run.exhausted:
            continue
        theta, s = run.ritz()
        top = np.argsort(theta)[::-1][:k]
        relative = run.residuals(s[:, top]) / np.maximum(np.abs(theta[top]), np.finfo(float).tiny)
        for i, r in enumerate(relative):
            if r >= tol:
                reached[i] = None
            elif reached[i] is None:
                reached[i] = run.steps
        done = all(r is not None for r in reached) and len(top) == k
        if done or run.exhausted or run.steps >= max_iter:
            vectors = run.basis.combine(s[:, top]).to(dtype)
            hvps = np.array([r if r is not None else run.steps for r in reached[:len(top)]])
            return Eigenpairs(theta[top], vectors, relative, hvps, run.steps, bool(done or run.exhausted))
