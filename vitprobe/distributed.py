"""Many processes under ``torchrun``: gloo on CPU, NCCL on GPU; rank 0 writes.

Every helper here degrades to the single-process case when ``torch.distributed`` is not
initialised, so analyses call them unconditionally.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device: torch.device) -> None:
    """Join the process group that ``torchrun`` describes in the environment, once."""
    if launched_by_torchrun() and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
        atexit.register(_leave)


def _leave() -> None:
    """Destroy the process group before the interpreter exits: its threads, left running,
    abort the process at exit ("terminate called without an active exception")."""
    if dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all ranks in place (no-op in a single process) and return it."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def shard(items: Sequence[T]) -> list[T]:
    """This rank's share of ``items``: every ``world_size``-th item starting at ``rank``."""
    return list(items[rank():: world_size()])


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def map_batches(work: Callable[[Any, int, int], T], batches: Sequence[Any]) -> list[T]:
    """``work(batch, index, offset)`` for every batch (``offset``: the images before it), in batch
    order. Under ``torchrun`` each rank works on every ``world_size``-th batch and the outputs
    (moved to the CPU) are gathered on every rank, so what an analysis computes from them is the
    single-process computation, summation order included. An error on any rank is raised on
    every rank (instead of leaving the others waiting in the gather)."""
    offsets = [0]
    for index in range(len(batches) - 1):
        offsets.append(offsets[-1] + len(batches[index][0]))  # batches are (images, ...) tuples
    mine: list[tuple[int, Any]] = []
    failure: BaseException | None = None
    for index in range(rank(), len(batches), world_size()):
        try:
            mine.append((index, work(batches[index], index, offsets[index])))
        except Exception as error:
            if not is_distributed():
                raise
            failure = error
            break
    if not is_distributed():
        return [output for _, output in mine]
    parts: list[Any] = [None] * world_size()
    dist.all_gather_object(parts, (failure, [(i, _on_cpu(out)) for i, out in mine] if failure is None else []))
    for raised, _ in parts:
        if raised is not None:
            raise raised
    return [output for _, output in sorted((item for _, items in parts for item in items), key=lambda p: p[0])]


def _on_cpu(value: Any) -> Any:
    """Tensors inside ``value`` (tuples, lists, dicts) moved to the CPU, for gathering."""
    if isinstance(value, torch.Tensor):
        return value.cpu()
    if isinstance(value, (tuple, list)):
        return type(value)(_on_cpu(v) for v in value)
    if isinstance(value, dict):
        return {k: _on_cpu(v) for k, v in value.items()}
    return value
