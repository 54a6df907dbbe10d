"""The Hessian of the mean loss as a linear operator (curvlinops style: ``matvec``, ``to_scipy``).

H = (1/N) sum_b n_b * Hessian(mean loss of batch b), over a fixed set of images, model in eval
mode, attention on the math path. A Hessian-vector product is a double backward (Pearlmutter 1994):
g = grad(L, w, create_graph=True), then Hv = grad(g, w, grad_outputs=v). When memory allows the
per-batch gradient graphs are kept after the first pass, so each product costs one extra backward
instead of a forward, a backward and a double backward per batch.

Memory degrades instead of failing. Before anything large is built, the graphs of one and two
images give the bytes a graph saves (fixed and per image); against the budget (half of the free
memory, or ``memory_budget``) that decides whether every batch's graph is kept ("auto") and, when
one batch's graph would not fit, how many images go into each backward (``micro_batch``): a CPU
has no out-of-memory error to recover from. On a CUDA out-of-memory error the operator still
drops the kept graphs and recomputes per batch, then halves the batches until they fit. The
Hessian of the mean loss does not depend on how the images are batched (BatchNorm is in eval
mode). Second-order work runs in float32 with TF32 matmuls off unless ``allow_tf32``. What was
chosen is in ``choices`` (the command writes it to the run's JSON).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Literal

import numpy as np
import torch
from torch import nn

from vitprobe import distributed
from vitprobe.data.batches import DataLike, as_batches
from vitprobe.errors import UserError
from vitprobe.models.loaded import LoadedModel, as_loaded
from vitprobe.models.module_state import module_device
from vitprobe.sharpness.loss import LossFn, analysis_mode, batch_loss, cross_entropy, local_share
from vitprobe.sharpness.memory import MEMORY_FRACTION, free_memory
from vitprobe.sharpness.vectors import ParamFilter, filter_label, select_parameters, unflatten

KeepGraphs = Literal["auto"] | bool


class HessianOperator:
    """Hessian of the mean loss of ``model`` over ``data`` with respect to (a subset of) its parameters.

    ``params``: None for every trainable parameter, a regular expression on parameter names, or a
    callable ``(name, parameter) -> bool``. ``keep_graphs``: keep every batch's gradient graph
    (True), recompute per product (False), or keep them when the estimated memory of the graphs is
    below half of what is free ("auto"). ``matvec`` takes a flat vector (torch or numpy) or a list of
    per-parameter tensors and answers in the same form; ``hvps`` counts the products.
    Parameters that receive no gradient contribute zero rows and columns.
    """

    def __init__(self, model: nn.Module | LoadedModel, data: DataLike, loss_fn: LossFn | None = None,
                 params: ParamFilter = None, keep_graphs: KeepGraphs = "auto",
                 micro_batch: int | None = None, allow_tf32: bool = False,
                 memory_budget: float | None = None) -> None:
        if micro_batch is not None and micro_batch < 1:
            raise ValueError(f"micro_batch must be at least 1, got {micro_batch}")
        if memory_budget is not None and not memory_budget > 0:
            raise ValueError(f"memory_budget must be a positive number of bytes, got {memory_budget}")
        self.loaded = as_loaded(model)
        self.module = self.loaded.module
        self.loss_fn = loss_fn or cross_entropy
        batches = as_batches(data)
        self.num_images = batches.num_images
        self.micro_batch = micro_batch
        self.allow_tf32 = allow_tf32
        self.batches = self._split(local_share(batches))
        named = select_parameters(self.module, params)
        self.params_label = filter_label(params)
        self.param_names = [name for name, _ in named]
        self.params = [p for _, p in named]
        self.size = sum(p.numel() for p in self.params)
        self.dtype = self.params[0].dtype
        self.device = module_device(self.module)
        self.hvps = 0
        self.memory_budget = memory_budget
        self.memory: dict = {}
        self._kept: list[torch.Tensor] | None = None
        self._kept_params: list[torch.Tensor] = []
        self._keep_request = keep_graphs
        self.keep_graphs = self._degrading(lambda: self._build(self._keep_request))

    @property
    def choices(self) -> dict:
        """How the products are computed: kept graphs, images per backward, TF32."""
        return {"keep_graphs": self.keep_graphs, "micro_batch": self.micro_batch,
                "allow_tf32": self.allow_tf32, "device": str(self.device), **self.memory}

    def _split(self, batches: Sequence) -> list:
        """The batches re-cut to ``micro_batch`` images at most (each keeps its images' order)."""
        if self.micro_batch is None:
            return list(batches)
        return [(x[i:i + self.micro_batch], y[i:i + self.micro_batch]) for x, y in batches
                for i in range(0, len(x), self.micro_batch)]

    def _degrading(self, work):
        """Run ``work``; on out-of-memory give up the kept graphs first, then halve the batches,
        and retry; out of memory at one image per backward is raised."""
        while True:
            try:
                with self._precision():
                    return work()
            except torch.OutOfMemoryError:
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                largest = max(len(x) for x, _ in self.batches)
                if self._keep_request is not False:
                    self._keep_request = False
                    self.release()
                elif largest > 1:
                    self.micro_batch = largest // 2
                    self.batches = self._split(self.batches)
                else:
                    raise

    @contextmanager
    def _precision(self) -> Iterator[None]:
        """TF32 matmuls off (unless ``allow_tf32``) while second-order work runs on CUDA."""
        if self.device.type != "cuda":
            yield
            return
        saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = self.allow_tf32
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved

    @property
    def shape(self) -> tuple[int, int]:
        return self.size, self.size

    # -- building ---------------------------------------------------------------------
    def _weighted_grad(self, batch, create_graph: bool) -> tuple[torch.Tensor, tuple]:
        """The batch's summed loss, and the gradient of its share n_b / N of the mean loss (so the
        products need no division afterwards)."""
        n = int(batch[0].shape[0])
        loss = batch_loss(self.module, batch, self.loss_fn, self.device)
        grads = torch.autograd.grad(loss * (n / self.num_images), self.params, create_graph=create_graph,
                                    allow_unused=True)
        return loss.detach() * n, grads

    def _batch_loss_only(self, batch) -> torch.Tensor:
        with torch.no_grad():
            return batch_loss(self.module, batch, self.loss_fn, self.device) * int(batch[0].shape[0])

    def _graph_bytes(self) -> tuple[float, float]:
        """(fixed, per image) bytes that one batch's double-backward graph saves, from graphs of
        one and two images of the first batch: what a larger batch would need, found before
        building it (a CPU has no out-of-memory error to fall back on). The probes' graphs are
        freed at once; they are built inside Python saved-tensor hooks, and a kept graph whose
        nodes hold such hooks crashes the process when it is freed at interpreter exit."""
        images, labels = self.batches[0]
        sizes = [n for n in (1, 2) if n <= len(images)]
        counts = []
        try:
            for n in sizes:
                with _SavedBytes() as counter:
                    self._weighted_grad((images[:n], labels[:n]), create_graph=True)
                counts.append(float(counter.bytes))
        except UserError:
            self._batch_loss_only(self.batches[0])  # the whole batch's refusal (its full label range)
            raise
        if len(counts) == 1:
            return 0.0, counts[0]
        per_image = max(counts[1] - counts[0], 1.0)
        return max(counts[0] - per_image, 0.0), per_image

    def _plan_memory(self, keep_graphs: KeepGraphs) -> bool:
        """Whether to keep every batch's graph, and (unless ``micro_batch`` was given) the most
        images per backward that fit: decided from :meth:`_graph_bytes` against the budget (half
        of the free memory unless ``memory_budget``), recorded in ``choices``."""
        if keep_graphs is False and (self.micro_batch is not None or self.device.type == "cuda"):
            return False  # nothing to decide: CUDA degrades on its out-of-memory error
        budget = self.memory_budget or MEMORY_FRACTION * free_memory(self.device)
        fixed, per_image = self._graph_bytes()
        local_images = sum(len(x) for x, _ in self.batches)
        keep = keep_graphs is True or (keep_graphs == "auto" and fixed + per_image * local_images < budget)
        largest = max(len(x) for x, _ in self.batches)
        fits = max(1, int((budget - fixed) // per_image))
        self.memory = {"graph_bytes_per_image": round(per_image), "graph_bytes_fixed": round(fixed),
                       "memory_budget_bytes": round(budget)}
        if not keep and self.micro_batch is None and largest > fits:
            self.micro_batch = fits
            self.batches = self._split(self.batches)
            self.memory["micro_batch_from"] = "estimated graph size"
        return keep

    def _build(self, keep_graphs: KeepGraphs) -> bool:
        """One pass over the data: the mean loss (checked finite) and, if kept, the graphs."""
        if keep_graphs not in ("auto", True, False):
            raise ValueError(f"keep_graphs must be 'auto', True or False, not {keep_graphs!r}")
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        kept = [torch.zeros((), dtype=self.dtype, device=self.device) for _ in self.params]
        with analysis_mode(self.module):
            keep = self._plan_memory(keep_graphs)
            for batch in self.batches:
                if keep:
                    loss, grads = self._weighted_grad(batch, create_graph=True)
                else:
                    loss, grads = self._batch_loss_only(batch), ()
                total += loss.double()
                if keep:
                    kept = [acc + g if g is not None and g.requires_grad else acc
                            for acc, g in zip(kept, grads)]
        distributed.all_reduce_sum(total)
        self.loss = float(total) / self.num_images
        if keep:
            pairs = [(g, p) for g, p in zip(kept, self.params) if g.requires_grad]
            self._kept = [g for g, _ in pairs]
            self._kept_params = [p for _, p in pairs]
        return keep

    # -- products ---------------------------------------------------------------------
    def _local_hvp(self, vs: list[torch.Tensor]) -> Sequence[torch.Tensor | None]:
        """sum over this rank's batches of (n_b / N) H_b v, per parameter (None: no contribution).
        With kept graphs this is one backward whose parts are used as they come."""
        if self._kept is not None:
            if not self._kept:
                return [None] * len(self.params)
            index = {id(p): i for i, p in enumerate(self.params)}
            wanted = [vs[index[id(p)]] for p in self._kept_params]
            return torch.autograd.grad(self._kept, self.params, grad_outputs=wanted, retain_graph=True,
                                       allow_unused=True)
        out = [torch.zeros_like(p) for p in self.params]
        with analysis_mode(self.module):
            for batch in self.batches:
                with torch.enable_grad():
                    _, grads = self._weighted_grad(batch, create_graph=True)
                pairs = [(g, v) for g, v in zip(grads, vs) if g is not None and g.requires_grad]
                if pairs:
                    parts = torch.autograd.grad([g for g, _ in pairs], self.params,
                                                grad_outputs=[v for _, v in pairs], allow_unused=True)
                    for acc, part in zip(out, parts):
                        if part is not None:
                            acc += part
        return out

    def _flat_hvp(self, vs: Sequence[torch.Tensor]) -> torch.Tensor:
        """H v as one flat vector, for ``v`` given as per-parameter tensors."""
        vs = [v.to(device=self.device, dtype=self.dtype) for v in vs]
        local = self._degrading(lambda: self._local_hvp(vs))
        flat = torch.empty(self.size, dtype=self.dtype, device=self.device)
        # each part copied into place once (conv weights' parts come transposed: a reshape and a
        # concatenation would copy them twice)
        for view, part in zip(unflatten(flat, self.params), local):
            if part is None:
                view.zero_()
            else:
                view.copy_(part)
        self.hvps += 1
        return distributed.all_reduce_sum(flat)

    def hvp(self, vs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """H v for ``v`` given as per-parameter tensors; returns per-parameter tensors."""
        return unflatten(self._flat_hvp(vs), self.params)

    def matvec(self, v):
        """H v. ``v`` is a flat torch vector, a flat numpy vector, or a per-parameter list."""
        if isinstance(v, (list, tuple)):
            return self.hvp(v)
        if isinstance(v, np.ndarray):
            out = self.matvec(torch.from_numpy(np.ascontiguousarray(v).reshape(-1)))
            return out.cpu().numpy().astype(v.dtype, copy=False)
        if v.numel() != self.size:
            raise ValueError(f"vector of size {v.numel()} for a Hessian of size {self.size}")
        return self._flat_hvp(unflatten(v.reshape(-1).to(self.device, self.dtype), self.params)).to(v.dtype)

    __matmul__ = matvec

    def to_scipy(self, dtype=np.float64):
        """A symmetric ``scipy.sparse.linalg.LinearOperator`` calling ``matvec``."""
        from scipy.sparse.linalg import LinearOperator

        matvec = lambda x: self.matvec(np.asarray(x, dtype=dtype).reshape(-1))
        return LinearOperator(self.shape, matvec=matvec, rmatvec=matvec, dtype=dtype)

    def split(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """A flat vector as per-parameter tensors aligned with ``param_names``."""
        return [t.detach().clone() for t in unflatten(flat.to(self.dtype), self.params)]

    def release(self) -> None:
        """Drop the kept graphs (the operator then recomputes them per product)."""
        self._kept, self._kept_params, self.keep_graphs = None, [], False


class _SavedBytes(torch.autograd.graph.saved_tensors_hooks):
    """Counts the bytes of distinct storages that autograd saves inside the block."""

    def __init__(self) -> None:
        self.bytes = 0
        self._seen: set[int] = set()
        super().__init__(self._pack, lambda t: t)

    def __enter__(self) -> _SavedBytes:  # type: ignore[override]  # the base returns None
        super().__enter__()
        return self

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in self._seen:
            self._seen.add(storage.data_ptr())
            self.bytes += storage.nbytes()
        return tensor
