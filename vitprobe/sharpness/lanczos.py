"""Lanczos on a symmetric operator: extreme eigenpairs with a residual stopping rule, and the
tridiagonal matrices that stochastic Lanczos quadrature needs.

Lanczos (1950) builds an orthonormal Krylov basis V and the tridiagonal T = V^T H V one product at a
time; the Ritz pairs (theta, V s) of T approximate H's extreme eigenpairs far faster than power
iteration (Saad, *Numerical Methods for Large Eigenvalue Problems*, ch. 6). With full
reorthogonalisation the basis stays orthogonal to working precision, and the residual of a Ritz
pair is exact and free: ||H y - theta y|| = beta_j |s_j|.

Reorthogonalisation is partial (Simon 1984, "The Lanczos algorithm with partial
reorthogonalization"): the loss of orthogonality omega_{j,k} ~ v_j . v_k is estimated by Simon's
recurrence from the tridiagonal alone, and w is orthogonalised against the basis only when an
estimate exceeds sqrt(eps), and on the step after; the basis then stays semi-orthogonal, which
keeps the Ritz values (and the residual bound) accurate to working precision (Simon 1984,
Theorem 4). A reorthogonalisation is one classical Gram-Schmidt pass, and a second only when the
first removed most of w (Daniel, Gragg, Kaufman & Stewart 1976: ||w after|| < ||w|| / sqrt 2).
The count of reorthogonalised steps is kept in ``reorthogonalised``. The basis has the parameters' dtype, and dot products and
norms accumulate in float64 block by block (:func:`vitprobe.sharpness.vectors.dot`) without
whole-vector casts. A ``tol`` that a float32 basis cannot deliver (below 100 float32 epsilons)
switches the basis, and the recurrence, to float64; the products stay in the operator's dtype.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
from scipy.linalg import eigh_tridiagonal

from vitprobe.errors import UserError
from vitprobe.sharpness.memory import vectors_that_fit
from vitprobe.sharpness.vectors import dot, norm

Matvec = Callable[[torch.Tensor], torch.Tensor]


class SymmetricOperator(Protocol):
    """What the solvers need of a matrix (curvlinops' operators and :class:`HessianOperator` are
    such): ``shape`` (n, n), the ``dtype`` and ``device`` of its vectors, and ``A @ v`` for a flat
    vector v of length n."""

    @property
    def shape(self) -> tuple[int, int]: ...

    @property
    def dtype(self) -> torch.dtype: ...

    @property
    def device(self) -> torch.device: ...

    def __matmul__(self, v: torch.Tensor) -> torch.Tensor: ...


def products(operator: SymmetricOperator) -> Matvec:
    """``v -> operator @ v`` for flat torch vectors."""
    return lambda v: operator @ v
CHUNK = 32
PRECISE_BELOW = 100  # a tol under this many epsilons of the operator's dtype needs a float64 basis


class _Basis:
    """The Lanczos vectors, stored in chunks so the basis grows without copying; on the vectors'
    device, or on the host (``host``) when it would not fit there."""

    def __init__(self, size: int, dtype: torch.dtype, device: torch.device, host: bool = False) -> None:
        self.size, self.dtype, self.device, self.host = size, dtype, device, host
        self.storage = torch.device("cpu") if host else device
        self.chunks: list[torch.Tensor] = []
        self.count = 0

    def append(self, v: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        """Store v / scale as the next vector; return it on the vectors' device (on the device:
        the stored row itself, written in one pass)."""
        if self.count % CHUNK == 0:
            self.chunks.append(torch.empty(CHUNK, self.size, dtype=self.dtype, device=self.storage))
        row = self.chunks[-1][self.count % CHUNK]
        self.count += 1
        if not self.host:
            return torch.div(v, scale, out=row)
        vector = v / scale
        row.copy_(vector)
        return vector

    def _filled(self):
        for i, chunk in enumerate(self.chunks):
            rows = min(CHUNK, self.count - i * CHUNK)
            yield chunk[:rows]

    def project_out(self, w: torch.Tensor) -> torch.Tensor:
        """w minus its projection on the basis (one classical Gram-Schmidt pass)."""
        stored = w.to(self.storage)
        for block in self._filled():
            stored = stored - block.T @ (block @ stored)
        return stored.to(self.device)

    def orthogonalise(self, w: torch.Tensor) -> torch.Tensor:
        """One pass, and a second when the first removed most of w (DGKS 1976)."""
        before = norm(w)
        w = self.project_out(w)
        return self.project_out(w) if norm(w) < before / math.sqrt(2) else w

    def combine(self, coefficients: np.ndarray) -> torch.Tensor:
        """V^T c for each column c of ``coefficients`` (count x r): the Ritz vectors, as rows."""
        c = torch.as_tensor(coefficients, dtype=self.dtype, device=self.storage)
        out = torch.zeros(c.shape[1], self.size, dtype=self.dtype, device=self.storage)
        start = 0
        for block in self._filled():
            rows = min(block.shape[0], c.shape[0] - start)
            if rows <= 0:
                break
            out += c[start:start + rows].T @ block[:rows]
            start += rows
        return out.to(self.device)


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
    reorthogonalised: int = 0
    host_basis: bool = False
    # the dtype the products are computed in: the rounding Simon's estimates model (default: the
    # start vector's); a float64 basis over float32 products loses orthogonality at float32's rate
    precision: torch.dtype | None = None

    def __post_init__(self) -> None:
        self.size = self.start.numel()
        self.basis = (_Basis(self.size, self.start.dtype, self.start.device, self.host_basis)
                      if self.reorthogonalise else None)
        scale = norm(self.start)
        v = self.basis.append(self.start, scale) if self.basis is not None else self.start / scale
        self._v, self._previous = v, torch.zeros_like(v)
        self.exhausted = False
        self._eps = float(torch.finfo(self.precision or v.dtype).eps)
        self._omega: list[np.ndarray] = [np.ones(1)]  # omega[j][k] estimates v_j . v_k
        self._again = False  # reorthogonalise the next step too

    @property
    def steps(self) -> int:
        return len(self.alphas)

    def step(self) -> None:
        """One product: extends T by alpha_j and beta_j (the norm of the next residual)."""
        v = self._v
        w = self.matvec(v)
        if w.untyped_storage().data_ptr() == v.untyped_storage().data_ptr():
            w = w.clone()  # an operator that hands v back (the identity): w is updated in place
        alpha = dot(w, v)
        w.sub_(v, alpha=alpha)
        if self.betas:
            w.sub_(self._previous, alpha=self.betas[-1])
        self.alphas.append(alpha)
        beta = norm(w)
        if self.basis is not None:
            lost = self._lost_orthogonality(beta)
            if lost or self._again:  # on detection, and on the step after (Simon 1984)
                w = self.basis.orthogonalise(w)
                beta = norm(w)
                self.reorthogonalised += 1
                self._omega[-1][:-2] = self._eps  # orthogonal again, to working precision
                self._again = not self._again
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
            self._omega[-1][:-1] = self._eps
        self._previous, self._v = v, self._store(w, beta)

    def _store(self, w: torch.Tensor, beta: float) -> torch.Tensor:
        """The next Lanczos vector w / beta, written straight into the basis when there is one
        (else w itself is scaled: it is this step's own tensor)."""
        return self.basis.append(w, beta) if self.basis is not None else w.div_(beta)

    def _lost_orthogonality(self, beta: float) -> bool:
        """Extend Simon's estimates to the next vector, v_{j+1} = w / beta; true when one of them
        exceeds sqrt(eps)."""
        j, a, b = len(self.alphas) - 1, self.alphas, self.betas
        previous = self._omega[-1]
        before = self._omega[-2] if len(self._omega) > 1 else np.zeros(0)
        scale = max(abs(alpha) for alpha in a) + max(b + [beta])
        omega = np.empty(j + 2)
        for k in range(j):
            value = (b[k] * previous[k + 1] + (a[k] - a[j]) * previous[k]
                     + (b[k - 1] * previous[k - 1] if k > 0 else 0.0) - b[j - 1] * before[k])
            value += np.copysign(2 * self._eps * scale, value)  # the rounding Simon adds
            omega[k] = value / max(beta, np.finfo(float).tiny)
        omega[j] = self._eps * scale / max(beta, np.finfo(float).tiny)
        omega[j + 1] = 1.0
        self._omega.append(omega)
        return bool(j and np.max(np.abs(omega[:j])) > np.sqrt(self._eps))

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
    choices: dict = field(default_factory=dict)  # where and in which dtype the basis was kept


def _in_dtype(matvec: Matvec, dtype: torch.dtype) -> Matvec:
    """``matvec`` applied in ``dtype`` to vectors of another (float64) dtype, and back."""
    def product(v: torch.Tensor) -> torch.Tensor:
        return matvec(v.to(dtype)).to(v.dtype)
    return product


def basis_on_host(size: int, steps: int, dtype: torch.dtype, device: torch.device,
                  basis: str = "auto") -> bool:
    """Whether the basis goes to the host: ``basis`` "host", or "auto" on a GPU where the ``steps``
    vectors of ``size`` (and a chunk's slack) do not fit in half the free memory."""
    if basis not in ("auto", "device", "host"):
        raise ValueError(f"basis must be 'auto', 'device' or 'host', got {basis!r}")
    if basis != "auto" or device.type != "cuda":
        return basis == "host"
    return vectors_that_fit(size, dtype, device) < steps + CHUNK


def lanczos_top(operator: SymmetricOperator, k: int, tol: float, max_iter: int, seed: int = 0,
                basis: str = "auto", start: torch.Tensor | None = None, min_steps: int = 1) -> Eigenpairs:
    """The k algebraically largest eigenpairs of a symmetric operator by Lanczos with partial
    reorthogonalisation; stops when every wanted Ritz pair has ||H y - theta y|| / |theta| < tol
    (ARPACK's rule). An eigenvalue then lies within tol |theta| of each value, but not always the
    one of its rank: an eigenvalue whose eigenvector the start holds little of emerges late, and
    until it does the values below it stand one rank too high. On ``benchmarks/solvers.py``'s ViT
    (lambda_5 = 2.676, lambda_6 = 2.639) lambda_5 emerged after 38 products; before that the fifth
    value converged to lambda_6, so tol 1e-2 stopped at 27 products on 2.638 (tol 1e-3: 53, 2.676).
    ``basis``: keep the Lanczos vectors on the device, on the host, or ("auto") on the host only
    when they would not fit on the GPU; where ``max_iter`` vectors would not fit in half the free
    memory the run stops there (``choices["max_iter_from_memory"]``, and ``converged`` False if it
    had not converged). ``start``: the first Lanczos vector (a warm start, such
    as the previous eigenvector of a slowly changing operator; default a seeded random vector);
    ``min_steps``: products taken before the stopping test may end the run.
    """
    size, dtype, device, matvec = operator.shape[0], operator.dtype, operator.device, products(operator)
    if not 1 <= k <= size:
        raise ValueError(f"k must be between 1 and the operator size {size}, got {k}")
    generator = torch.Generator().manual_seed(seed)
    basis_dtype = torch.float64 if tol < PRECISE_BELOW * torch.finfo(dtype).eps else dtype
    host = basis_on_host(size, max_iter, basis_dtype, device, basis)
    room = vectors_that_fit(size, basis_dtype, torch.device("cpu") if host else device)
    if room <= k:
        raise UserError(f"the Lanczos basis needs at least {k + 1} vectors of {size:,} parameters "
                        f"({(k + 1) * size * torch.finfo(basis_dtype).bits / 8e9:.1f} GB), more than half the free "
                        "memory: restrict the parameters (--params) or free memory")
    if start is None:
        start = torch.randn(size, generator=generator, dtype=basis_dtype).to(device)
    elif start.numel() != size or not bool(torch.isfinite(start).all()) or norm(start) == 0:
        raise ValueError(f"start must be a finite non-zero vector of size {size}")
    else:
        start = start.reshape(-1).to(device=device, dtype=basis_dtype)
    run = Lanczos(matvec if basis_dtype == dtype else _in_dtype(matvec, dtype), start,
                  reorthogonalise=True, generator=generator, host_basis=host, precision=dtype)
    choices: dict[str, str | int] = {"basis": "host" if host else "device",
                                     "basis_dtype": str(basis_dtype).replace("torch.", "")}
    if room < max_iter:  # the basis stops growing where memory ends: the run then reports converged=False
        max_iter = choices["max_iter_from_memory"] = room
    reached: list[int | None] = [None] * k
    while True:
        run.step()
        if run.steps < max(k, min_steps) and not run.exhausted:
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
            assert run.basis is not None  # reorthogonalise=True keeps one
            vectors = run.basis.combine(s[:, top]).to(dtype)
            hvps = np.array([r if r is not None else run.steps for r in reached[:len(top)]])
            return Eigenpairs(theta[top], vectors, relative, hvps, run.steps, bool(done or run.exhausted),
                              {**choices, "reorthogonalised_steps": run.reorthogonalised})
