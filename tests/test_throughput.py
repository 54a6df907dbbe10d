"""measure_throughput(): rows carry their conditions; out-of-memory halves the batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from vitprobe.errors import UserError
from vitprobe.throughput import measure_throughput

SEEN: list[int] = []  # batch sizes the module was called with (measure_throughput runs a copy)


class RunsOutAbove(nn.Module):
    """A real module that raises torch.OutOfMemoryError for batches above ``limit``."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.conv = nn.Conv2d(3, 4, 3)
        SEEN.clear()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        SEEN.append(images.shape[0])
        if images.shape[0] > self.limit:
            raise torch.OutOfMemoryError(f"simulated: batch {images.shape[0]} > {self.limit}")
        return self.conv(images).mean((2, 3))


def test_rows_carry_device_dtype_batch_resolution_threads(tiny_vit) -> None:
    result = measure_throughput(tiny_vit, batch_size=4, warmup=1, steps=3)
    frame = result.to_frame().set_index("metric")
    assert set(frame.index) == {"images_per_s", "ms_per_batch", "ms_per_step_median", "images_per_s_per_core"}
    row = frame.loc["images_per_s"]
    assert (row["device"], row["dtype"], row["batch"], row["resolution"]) == ("cpu", "fp32", 4, "16x16")
    assert row["threads"] == torch.get_num_threads()
    assert row["value"] == pytest.approx(4 * 3 / result.seconds)
    assert frame.loc["images_per_s_per_core", "value"] == pytest.approx(row["value"] / row["threads"])
    assert frame.loc["ms_per_batch", "value"] == pytest.approx(1000 * result.seconds / 3)
    assert row["parameters"] == sum(p.numel() for p in tiny_vit.parameters())


def test_input_size_and_bf16_leave_the_callers_model_alone(tiny_resnet) -> None:
    result = measure_throughput(tiny_resnet, torch.zeros(1, 3, 24, 20), batch_size=2, precision="bf16",
                                channels_last=True, warmup=0, steps=1)
    row = result.to_frame().iloc[0]
    assert (row["dtype"], row["resolution"], row["channels_last"]) == ("bf16", "24x20", True)
    assert all(p.dtype == torch.float32 for p in tiny_resnet.parameters())


def test_out_of_memory_halves_the_batch() -> None:
    module = RunsOutAbove(limit=5)
    result = measure_throughput(module, torch.zeros(1, 3, 8, 8), batch_size=16, warmup=2, steps=3)
    assert (result.batch_size, result.requested_batch_size) == (4, 16)
    # 16 and 8 fail on their first warm-up step; 4 runs 2 warm-up + 3 timed steps
    assert SEEN == [16, 8, 4, 4, 4, 4, 4]
    row = result.to_frame().iloc[0]
    assert (row["batch"], row["requested_batch"]) == (4, 16)


def test_out_of_memory_at_batch_one_is_a_user_error() -> None:
    module = RunsOutAbove(limit=0)
    with pytest.raises(UserError, match="even at batch size 1"):
        measure_throughput(module, torch.zeros(1, 3, 8, 8), batch_size=2, warmup=0, steps=1)
    assert SEEN == [2, 1]


def test_fp16_on_cpu_is_refused(tiny_vit) -> None:
    with pytest.raises(UserError, match="fp16 on CPU"):
        measure_throughput(tiny_vit, precision="fp16", device="cpu")


def test_every_step_is_timed_on_its_own_as_timm_does(tiny_vit) -> None:
    result = measure_throughput(tiny_vit, torch.zeros(1, 3, 16, 16), batch_size=4, warmup=1, steps=5)
    assert len(result.step_seconds) == 5 and all(t > 0 for t in result.step_seconds)
    assert sum(result.step_seconds) <= result.seconds
    frame = result.to_frame().set_index("metric")
    assert frame.loc["ms_per_step_median", "value"] == pytest.approx(1000 * np.median(result.step_seconds))
