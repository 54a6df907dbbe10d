"""How much memory is free, and how many Lanczos vectors fit in it: the rule by which second-order
work chooses what to keep before it builds it (a CPU has no out-of-memory error to recover from)."""

from __future__ import annotations

import os

import torch

MEMORY_FRACTION = 0.5  # of the free memory, for what one analysis keeps (graphs, a Lanczos basis)


def free_memory(device: torch.device) -> float:
    """Bytes free on ``device`` (CUDA: the allocator's view; CPU: MemAvailable)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return float(free)
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def vectors_that_fit(size: int, dtype: torch.dtype, device: torch.device) -> int:
    """How many vectors of ``size`` entries of ``dtype`` fit in ``MEMORY_FRACTION`` of what is
    free on ``device``."""
    return int(MEMORY_FRACTION * free_memory(device) // (size * torch.finfo(dtype).bits // 8))
