"""Inference throughput, measured the way timm's ``benchmark.py`` measures it."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from vitprobe.data.batches import DataLike, as_batches
from vitprobe.errors import UserError
from vitprobe.models.loaded import LoadedModel, as_loaded
from vitprobe.models.module_state import module_device
from vitprobe.progress import log
from vitprobe.result import Result, analysis

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(kw_only=True)
class ThroughputResult(Result):
    """One timed run: ``images`` images in ``seconds`` of wall time (the timed loop), and the
    conditions."""

    images_per_second: float
    step_seconds: list[float]
    steps: int
    warmup: int
    batch_size: int
    requested_batch_size: int
    precision: str
    resolution: tuple[int, int]
    device: str
    threads: int
    channels_last: bool
    compiled: bool
    parameters: int

    @property
    def images_per_second_per_core(self) -> float | None:
        """Images per second per CPU thread (Chen et al. report CPU throughput per core)."""
        return self.images_per_second / self.threads if self.device.startswith("cpu") else None

    ANNOTATIONS: ClassVar[tuple[str, ...]] = (
        "device", "dtype", "batch", "requested_batch", "resolution", "threads", "channels_last",
        "compiled", "warmup", "steps", "parameters")
    REPORTED: ClassVar[tuple[str, ...]] = ("images_per_s",)
    TIMES_ITSELF: ClassVar[bool] = True

    def rows(self) -> list[dict]:
        rows = [("images_per_s", self.images_per_second),
                ("ms_per_batch", 1000 * self.seconds / self.steps),
                ("ms_per_step_median", 1000 * float(np.median(self.step_seconds)))]
        if self.images_per_second_per_core is not None:
            rows.append(("images_per_s_per_core", self.images_per_second_per_core))
        conditions = {
            "device": self.device, "dtype": self.precision, "batch": self.batch_size,
            "requested_batch": self.requested_batch_size,
            "resolution": f"{self.resolution[0]}x{self.resolution[1]}",
            "threads": self.threads, "channels_last": self.channels_last,
            "compiled": self.compiled, "warmup": self.warmup, "steps": self.steps,
            "parameters": self.parameters,
        }
        return [{"metric": metric, "value": value, **conditions} for metric, value in rows]


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return "cpu"


def _timed_run(module: nn.Module, inputs: torch.Tensor, warmup: int, steps: int,
               device: torch.device) -> tuple[float, list[float]]:
    """Seconds of wall time for ``steps`` forward passes after ``warmup`` untimed ones, and the
    seconds of each step. As timm's ``benchmark.py``: the device is synchronised at the end of
    every step, so a step's time is its own, and the rate is images over the whole loop."""
    for _ in range(warmup):
        module(inputs)
    _synchronize(device)
    step_seconds = []
    start = time.perf_counter()
    for _ in range(steps):
        step_start = time.perf_counter()
        module(inputs)
        _synchronize(device)
        step_seconds.append(time.perf_counter() - step_start)
    return time.perf_counter() - start, step_seconds


@analysis
def measure_throughput(
    model: LoadedModel | nn.Module,
    data: DataLike | None = None,
    *,
    batch_size: int = 256,
    precision: str = "fp32",
    channels_last: bool = False,
    compile: bool = False,
    device: torch.device | str | None = None,
    warmup: int = 10,
    steps: int = 50,
) -> ThroughputResult:
    """Inference images per second of ``model``, as timm's ``benchmark.py`` measures it.

    Synthetic ``randn`` inputs of the shape of ``data``'s images (default: the model's input
    configuration), the model in
    eval mode under ``torch.inference_mode``, ``warmup`` untimed steps, then ``steps``
    timed steps with device synchronisation before and after; images per second =
    images / wall time of the timed loop (Touvron et al. 2021 measure DeiT this way).
    ``precision`` casts model and inputs (fp32, bf16, fp16), as timm's ``--precision``
    does without AMP. fp16 on a CPU is refused: torch runs it through slow fallback
    kernels, so the number would describe no real deployment. On out-of-memory the batch
    is halved and the measurement restarts; the row records both batch sizes. The
    caller's module is left untouched (a copy is cast, moved and compiled).
    """
    loaded = as_loaded(model)
    if precision not in DTYPES:
        raise UserError(f"precision must be one of {', '.join(DTYPES)}, got {precision!r}")
    if batch_size < 1 or steps < 1 or warmup < 0:
        raise UserError("throughput needs batch size >= 1, steps >= 1 and warmup >= 0")
    device = torch.device(device) if device is not None else module_device(loaded.module)
    if precision == "fp16" and device.type == "cpu":
        raise UserError("fp16 on CPU is refused: torch runs it through slow fallback kernels; "
                        "use --precision bf16 or fp32 on CPU, fp16 on a GPU")
    dtype = DTYPES[precision]
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    module = copy.deepcopy(loaded.module).eval().to(device=device, dtype=dtype)
    module = module.to(memory_format=memory_format)  # torch's stub has no overload taking all three
    if compile:
        module = torch.compile(module)  # type: ignore[assignment]  # a callable module
    if data is None:
        channels, (height, width) = int(loaded.data_config["input_size"][0]), loaded.input_size
    else:
        channels, height, width = (int(v) for v in as_batches(data)[0][0].shape[1:])
    batch = batch_size
    while True:
        try:
            with torch.inference_mode():
                inputs = torch.randn(batch, channels, height, width, device=device, dtype=dtype)
                inputs = inputs.contiguous(memory_format=memory_format)
                seconds, step_seconds = _timed_run(module, inputs, warmup, steps, device)
            break
        except torch.OutOfMemoryError:
            inputs = None
            if device.type == "cuda":
                torch.cuda.empty_cache()
            if batch == 1:
                raise UserError(f"{loaded.label} runs out of memory even at batch size 1") from None
            log(f"{loaded.label}: out of memory at batch {batch}; retrying at {batch // 2}")
            batch //= 2
    return ThroughputResult(
        model=loaded.label,
        images_per_second=batch * steps / seconds,
        seconds=seconds,
        step_seconds=step_seconds,
        images=batch * steps,
        steps=steps,
        warmup=warmup,
        batch_size=batch,
        requested_batch_size=batch_size,
        precision=precision,
        resolution=(int(height), int(width)),
        device=_device_name(device),
        threads=torch.get_num_threads(),
        channels_last=channels_last,
        compiled=compile,
        parameters=loaded.num_parameters,
    )
