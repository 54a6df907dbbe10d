"""PyHessian's own solver (Yao, Gholami, Keutzer & Mahoney 2020), run on the same model and data.

This runs ``pyhessian.hessian`` unchanged (power iteration with deflation, stopping when the relative
change of the eigenvalue is below ``tol``; Hutchinson trace) for a side-by-side check. What we add
around it: eval mode and math-path attention (PyHessian's double backward fails on timm's fused CPU
attention), a parameter block by switching ``requires_grad`` off elsewhere, a count of its
Hessian-vector products, and putting back everything it leaves on the model (``.grad`` tensors that
hold a graph, ``requires_grad`` flags, the global random state).
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from vitprobe.data.batches import Batch
from vitprobe.sharpness.loss import LossFn, analysis_mode


class PyHessianRun:
    """A ``pyhessian.hessian`` instance on ``module`` restricted to ``params``; count in ``hvps``."""

    def __init__(self, module: nn.Module, batches: Sequence[Batch], loss_fn: LossFn,
                 params: Sequence[nn.Parameter], seed: int = 0) -> None:
        self.module, self.batches, self.loss_fn = module, list(batches), loss_fn
        self.params, self.seed = list(params), seed
        self.hvps = 0

    @contextmanager
    def _session(self) -> Iterator[Any]:
        ph: Any = importlib.import_module("pyhessian.hessian")  # the module: the package rebinds the name

        chosen = {id(p) for p in self.params}
        everything = list(self.module.parameters())
        flags = [p.requires_grad for p in everything]
        grads = [p.grad for p in everything]
        original_hvp = ph.hessian_vector_product

        def counted_hvp(*args, **kwargs):
            self.hvps += 1
            return original_hvp(*args, **kwargs)

        cuda = next(iter(everything)).device.type == "cuda"
        try:
            for p in everything:
                p.requires_grad_(p.requires_grad and id(p) in chosen)
            ph.hessian_vector_product = counted_hvp
            with torch.random.fork_rng(devices=[]), analysis_mode(self.module), warnings.catch_warnings():
                # PyHessian calls loss.backward(create_graph=True); we reset every .grad afterwards
                warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph=True")
                torch.manual_seed(self.seed)
                if len(self.batches) == 1:
                    peer = ph.hessian(self.module, self.loss_fn, data=self.batches[0], cuda=cuda)
                else:
                    peer = ph.hessian(self.module, self.loss_fn, dataloader=self.batches, cuda=cuda)
                    loader_hvp = peer.dataloader_hv_product

                    def counted_loader_hvp(v):
                        self.hvps += 1
                        return loader_hvp(v)

                    peer.dataloader_hv_product = counted_loader_hvp
                yield peer
        finally:
            ph.hessian_vector_product = original_hvp
            for p, flag, grad in zip(everything, flags, grads):
                p.requires_grad_(flag)
                p.grad = grad

    def eigenvalues(self, k: int, tol: float, max_iter: int) -> tuple[list[float], list[list[torch.Tensor]]]:
        """PyHessian's ``eigenvalues(maxIter, tol, top_n)``: values and per-parameter vectors."""
        with self._session() as peer:
            values, vectors = peer.eigenvalues(maxIter=max_iter, tol=tol, top_n=k)
        return [float(v) for v in values], [[t.detach().clone() for t in vec] for vec in vectors]

    def trace(self, max_iter: int, tol: float) -> list[float]:
        """PyHessian's ``trace(maxIter, tol)``: its list of Hutchinson samples v^T H v."""
        with self._session() as peer:
            return [float(s) for s in peer.trace(maxIter=max_iter, tol=tol)]
