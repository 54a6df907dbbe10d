"""Memory that degrades instead of failing (the CPU path of the GPU work): batches split within a
product, the Lanczos basis on the host, what was chosen in the JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from vitprobe.cli import main
from vitprobe.sharpness import HessianOperator, hessian_spectrum


class RunsOutAbove(nn.Module):
    """A small CNN that, like a GPU near its limit, raises out-of-memory above ``limit`` images."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(x) > self.limit:
            raise torch.OutOfMemoryError(f"{len(x)} images do not fit")
        return self.head(torch.tanh(self.conv(x)).mean((2, 3)))


def _data():
    generator = torch.Generator().manual_seed(0)
    return [(torch.randn(n, 3, 8, 8, generator=generator), torch.randint(0, 3, (n,), generator=generator))
            for n in (7, 5)]


@pytest.mark.parametrize("keep", [True, False])
def test_splitting_batches_gives_the_same_product(tiny_vit, tiny_batches, keep):
    whole = HessianOperator(tiny_vit, tiny_batches, keep_graphs=keep)
    split = HessianOperator(tiny_vit, tiny_batches, keep_graphs=keep, micro_batch=2)
    assert split.choices["micro_batch"] == 2 and max(len(x) for x, _ in split.batches) == 2
    v = torch.randn(whole.size, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(split.matvec(v), whole.matvec(v), rtol=1e-4, atol=1e-6)
    assert split.loss == pytest.approx(whole.loss, rel=1e-6)


def test_out_of_memory_drops_kept_graphs_then_halves_the_batches():
    torch.manual_seed(0)
    limited = RunsOutAbove(limit=3)
    free = RunsOutAbove(limit=10**9)
    free.load_state_dict(limited.state_dict())
    operator = HessianOperator(limited, _data(), keep_graphs=True)
    reference = HessianOperator(free, _data(), keep_graphs=False)
    assert operator.choices["keep_graphs"] is False and operator.choices["micro_batch"] == 3
    v = torch.randn(operator.size, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(operator.matvec(v), reference.matvec(v), rtol=1e-5, atol=1e-7)
    hopeless = RunsOutAbove(limit=0)
    with pytest.raises(torch.OutOfMemoryError):
        HessianOperator(hopeless, _data())


def test_a_budget_below_one_batchs_graph_splits_the_batches_before_building_them(tiny_vit, tiny_batches):
    """On a CPU nothing raises out-of-memory: the split is decided from the graph size measured on
    one and two images, and the product is the unsplit one. A budget that holds every graph keeps
    them (control)."""
    roomy = HessianOperator(tiny_vit, tiny_batches, memory_budget=1e12)
    fixed, per_image = roomy.memory["graph_bytes_fixed"], roomy.memory["graph_bytes_per_image"]
    assert roomy.keep_graphs is True and roomy.micro_batch is None and per_image > 0
    tight = HessianOperator(tiny_vit, tiny_batches, memory_budget=fixed + 2.5 * per_image)
    assert tight.keep_graphs is False and tight.micro_batch == 2
    assert tight.choices["micro_batch_from"] == "estimated graph size"
    assert max(len(x) for x, _ in tight.batches) == 2
    v = torch.randn(roomy.size, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(tight.matvec(v), roomy.matvec(v), rtol=1e-4, atol=1e-6)
    # the estimate is the size of a real graph: a batch of 4 saves about fixed + 4 per image
    from vitprobe.sharpness.loss import analysis_mode
    from vitprobe.sharpness.operator import _SavedBytes

    x, y = tiny_batches[0]
    with analysis_mode(tiny_vit), _SavedBytes() as counter:
        roomy._weighted_grad((x[:4], y[:4]), create_graph=True)
    assert counter.bytes == pytest.approx(fixed + 4 * per_image, rel=0.02)


def test_a_basis_on_the_host_gives_the_same_eigenvalues(tiny_vit, tiny_batches):
    device = hessian_spectrum(tiny_vit, tiny_batches, k=3, tol=1e-6, basis="device")
    host = hessian_spectrum(tiny_vit, tiny_batches, k=3, tol=1e-6, basis="host")
    assert (device.choices["basis"], host.choices["basis"]) == ("device", "host")
    np.testing.assert_allclose(host.eigenvalues, device.eigenvalues, rtol=1e-6)
    assert host.total_hvps == device.total_hvps


def test_the_json_records_how_products_and_basis_were_kept(tmp_path, monkeypatch):
    (tmp_path / "memory_models.py").write_text(
        "from timm.models.resnet import BasicBlock, ResNet\n\n"
        "def resnet():\n    return ResNet(BasicBlock, [1, 1, 1, 1], channels=(4, 4, 4, 4), stem_width=4, "
        "num_classes=4)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "out"
    assert main(["sharpness", "--model", "py:memory_models:resnet", "--input-size", "16", "--num-images", "8",
                 "--micro-batch", "3", "--basis", "host", "--no-sam", "--out", str(out), "--quiet"]) == 0
    choices = json.loads((out / "sharpness.json").read_text())["choices"]["resnet"]
    assert choices["micro_batch"] == 3 and choices["basis"] == "host" and choices["allow_tf32"] is False
    assert choices["basis_dtype"] == "float32" and "keep_graphs" in choices


def test_the_gpu_benchmark_runs_its_smoke_version_on_the_cpu(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.py"
    out = tmp_path / "gpu.md"
    run = subprocess.run([sys.executable, str(script), "--smoke", "--images", "4", "--out", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    table = out.read_text()
    assert "CPU (smoke run)" in table
    for measure in ("lambda_1", "top-5", "Hutch++ trace", "lambda_1 with TF32", "PyHessian lambda_1",
                    "rollout maps/s", "gradcam maps/s", "3x3 landscape"):
        assert f"| {measure}" in table, measure


class Enormous:
    """An operator of 4 billion float64 parameters (32 GB a vector): never multiplied, since its
    basis cannot fit on this machine."""

    shape = (4_000_000_000, 4_000_000_000)
    dtype = torch.float64
    device = torch.device("cpu")

    def __matmul__(self, v: torch.Tensor) -> torch.Tensor:
        raise AssertionError("no product may be computed before the basis is known to fit")


def test_a_basis_that_cannot_fit_is_refused_before_anything_is_allocated():
    from vitprobe.errors import UserError
    from vitprobe.sharpness import eigenpairs
    from vitprobe.sharpness.memory import vectors_that_fit

    assert vectors_that_fit(Enormous.shape[0], torch.float64, torch.device("cpu")) < 2
    with pytest.raises(UserError, match=r"needs at least 2 vectors of 4,000,000,000 parameters \(64.0 GB\)"):
        eigenpairs(Enormous(), k=1)
