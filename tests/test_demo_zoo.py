"""The demo zoo: the SAM optimizer against its closed form, deterministic training, the cache."""

from __future__ import annotations

import json
from dataclasses import asdict, replace

import pytest
import torch
from torch import nn

from vitprobe import load_model
from vitprobe.models import demo
from vitprobe.models.sam_optimizer import SAM, frozen_batchnorm_stats


def test_sam_step_matches_closed_form_on_a_quadratic():
    a = torch.tensor([[3.0, 1.0], [1.0, 2.0]])
    w0 = torch.tensor([1.0, -2.0])
    w = nn.Parameter(w0.clone())
    rho, lr = 0.3, 0.1
    optimizer = SAM([w], torch.optim.SGD, rho=rho, lr=lr)

    def closure():
        optimizer.zero_grad()
        loss = 0.5 * w @ a @ w
        loss.backward()
        return loss

    closure()
    optimizer.step(closure)
    g = a @ w0
    perturbed = w0 + rho * g / g.norm()
    torch.testing.assert_close(w.detach(), w0 - lr * (a @ perturbed))


def test_adaptive_sam_scales_the_ascent_by_the_weights():
    w0 = torch.tensor([2.0, -0.5])
    w = nn.Parameter(w0.clone())
    optimizer = SAM([w], torch.optim.SGD, rho=0.2, adaptive=True, lr=1.0)
    (w ** 2).sum().backward()
    optimizer.first_step()
    g = 2 * w0
    expected = w0 + 0.2 * w0 ** 2 * g / (w0.abs() * g).norm()
    torch.testing.assert_close(w.detach(), expected)


def test_frozen_batchnorm_keeps_running_statistics():
    norm = nn.BatchNorm1d(3).train()
    norm(torch.randn(8, 3))
    before = norm.running_mean.clone()
    with frozen_batchnorm_stats(norm):
        norm(torch.randn(8, 3) + 5)
    assert torch.equal(norm.running_mean, before) and norm.momentum == 0.1


@pytest.fixture
def tiny_zoo(monkeypatch, tmp_path):
    monkeypatch.setenv("VITPROBE_CACHE", str(tmp_path))
    tiny = {name: replace(recipe, steps=4, warmup=2, train_images=96, batch_size=32)
            for name, recipe in demo.DEMO_ZOO.items()}
    monkeypatch.setattr(demo, "DEMO_ZOO", tiny)
    monkeypatch.setattr(demo, "test_accuracy", lambda model, num_images=64: 0.0)
    return tmp_path


def test_training_is_deterministic(tiny_zoo):
    first, _ = demo.train(demo.DEMO_ZOO["resnet-sam"])
    second, _ = demo.train(demo.DEMO_ZOO["resnet-sam"])
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), name


def test_demo_models_are_cached_after_first_use(tiny_zoo):
    model = load_model("demo:vit")
    path = demo.weights_path("vit")
    assert path.exists() and model.checkpoint == str(path)
    stamp = path.stat().st_mtime_ns
    again = load_model("demo:vit")
    assert path.stat().st_mtime_ns == stamp and again.checkpoint_sha256 == model.checkpoint_sha256
    assert model.family == "vit" and model.input_size == (demo.RESOLUTION, demo.RESOLUTION)
    assert model.class_names == ["circle", "square", "triangle", "cross"]


@pytest.mark.parametrize("name", list(demo.DEMO_ZOO))
def test_the_shipped_zoo_loads_and_reaches_its_recorded_accuracy(name, monkeypatch, tmp_path):
    """The shipped weights are used (nothing is trained: the cache stays empty), the file is the one
    its record's SHA-256 names, and its test accuracy, measured again, is the recorded one."""
    from vitprobe.report.files import sha256_file

    monkeypatch.setenv("VITPROBE_CACHE", str(tmp_path))
    loaded = load_model(f"demo:{name}")
    assert loaded.checkpoint == str(demo.shipped_path(name)) and not any(tmp_path.iterdir())
    record = json.loads(demo.shipped_path(name).with_suffix(".json").read_text())
    assert record["sha256"] == sha256_file(demo.shipped_path(name)) == loaded.checkpoint_sha256
    assert record["recipe"] == asdict(demo.DEMO_ZOO[name]) and record["recipe"]["version"] == 2
    assert demo.test_accuracy(loaded.module) == pytest.approx(record["test_accuracy"])
    assert record["test_accuracy"] > 0.9  # chance is 0.25
    assert loaded.input_size == (64, 64)


def test_shipped_weights_are_small():
    total = sum(path.stat().st_size for path in demo.SHIPPED.iterdir())
    assert total < 10 * 2**20 and len(list(demo.SHIPPED.glob("*.safetensors"))) == len(demo.DEMO_ZOO)


def test_retrain_on_a_shortened_schedule_is_deterministic(tiny_zoo, capsys):
    from vitprobe.cli import main

    for out in ("first", "second"):
        assert main(["models", "--retrain", "--only", "resnet", "vit", "--steps", "3",
                     "--out", str(tiny_zoo / out), "--quiet"]) == 0
    for name in ("resnet", "vit"):
        first = json.loads((tiny_zoo / "first" / f"{name}.json").read_text())
        second = json.loads((tiny_zoo / "second" / f"{name}.json").read_text())
        assert first["sha256"] == second["sha256"] and first["recipe"]["steps"] == 3
    assert "largest weight difference" in capsys.readouterr().out
