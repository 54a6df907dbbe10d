"""``python -m vitprobe sharpness`` end to end on small real models: files, rows, exit status."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import timm
from safetensors.torch import save_file

from vitprobe.cli import main

MODELS = textwrap.dedent('''
    import torch
    from timm.models.vision_transformer import VisionTransformer

    def tiny():
        torch.manual_seed(0)
        return VisionTransformer(img_size=16, patch_size=4, embed_dim=8, depth=2, num_heads=2,
                                 mlp_ratio=2.0, num_classes=4)

    def broken():
        model = tiny()
        with torch.no_grad():
            model.head.bias[0] = float("nan")
        return model
''')


@pytest.fixture
def model_module(tmp_path: Path, monkeypatch):
    (tmp_path / "sharpness_cli_models.py").write_text(MODELS)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "sharpness_cli_models"
    sys.modules.pop("sharpness_cli_models", None)


def test_command_writes_rows_figures_and_sidecar(tmp_path, model_module):
    out = tmp_path / "out"
    status = main(["sharpness", "--model", f"py:{model_module}:tiny", "--num-images", "12", "--batch-size", "5",
                   "--top-k", "2", "--trace", "--trace-samples", "6", "--density", "--density-vectors", "2",
                   "--density-steps", "5", "--sam-rho", "0.01", "--sam-rho", "0.05", "--keskar",
                   "--out", str(out), "--quiet"])
    assert status == 0
    frame = pd.read_csv(out / "sharpness.csv")
    counts = frame["metric"].value_counts().to_dict()
    assert counts == {"eigenvalue": 2, "trace": 1, "slq_node": 10, "sam_sharpness": 2, "keskar_sharpness": 1}
    eig = frame[frame["metric"] == "eigenvalue"]
    assert list(eig["k"]) == [1, 2] and (eig["residual"] < 1e-3).all() and (eig["hvps"] > 0).all()
    assert eig["value"].iloc[0] >= eig["value"].iloc[1]
    assert sorted(frame.loc[frame["metric"] == "sam_sharpness", "rho"]) == [0.01, 0.05]
    assert set(frame["model"]) == {"tiny"} and set(frame["images"]) == {12}
    assert (out / "figures" / "eigenvalues-tiny.png").stat().st_size > 0
    assert (out / "figures" / "density-tiny.png").stat().st_size > 0
    meta = json.loads((out / "sharpness.json").read_text())
    assert meta["command"] == "sharpness" and meta["status"] == "complete"


def test_adaptive_option_writes_rows_with_their_interval(tmp_path, model_module):
    """``--adaptive``: one row per radius, with the interval over the batches of ``--adaptive-m``
    images, equal to the analysis called on the same images."""
    import vitprobe

    out = tmp_path / "out"
    status = main(["sharpness", "--model", f"py:{model_module}:tiny", "--num-images", "8", "--batch-size", "4",
                   "--no-sam", "--adaptive", "--adaptive-rho", "0.001", "0.002", "--adaptive-m", "2",
                   "--adaptive-steps", "5", "--out", str(out), "--quiet"])
    assert status == 0
    frame = pd.read_csv(out / "sharpness.csv")
    rows = frame[frame["metric"] == "adaptive_worst_linf_sharpness"]
    assert list(rows["rho"]) == [0.001, 0.002] and set(rows["batches"]) == {4} and set(rows["m"]) == {2}
    assert (rows["ci_low"] < rows["value"]).all() and (rows["value"] < rows["ci_high"]).all()
    model = vitprobe.load_model(f"py:{model_module}:tiny")
    data = vitprobe.load_data("shapes:train", model, num_images=8, batch_size=4)
    direct = vitprobe.adaptive_sharpness(model, data, rho=[0.001, 0.002], m=2, steps=5)
    assert list(rows["value"]) == pytest.approx(list(direct.sharpness), rel=1e-6)


def test_command_on_an_arch_path_checkpoint_with_a_parameter_block(tmp_path):
    model = timm.create_model("test_vit", num_classes=4)
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    out = tmp_path / "out"
    status = main(["sharpness", "--model", f"test_vit={path}", "--num-images", "4", "--batch-size", "2",
                   "--params", r"^head\.", "--no-sam", "--out", str(out), "--quiet"])
    assert status == 0
    frame = pd.read_csv(out / "sharpness.csv")
    assert list(frame["metric"]) == ["eigenvalue"] and frame["params"].iloc[0] == r"^head\."
    assert frame["parameters"].iloc[0] == model.head.weight.numel() + model.head.bias.numel()


def test_non_finite_loss_exits_with_status_2(tmp_path, model_module, capsys):
    status = main(["sharpness", "--model", f"py:{model_module}:broken", "--num-images", "4",
                   "--out", str(tmp_path / "out"), "--quiet"])
    assert status == 2
    assert "not finite" in capsys.readouterr().err
    assert main(["sharpness", "--model", f"py:{model_module}:tiny", "--num-images", "4", "--params", "(",
                 "--out", str(tmp_path / "out2"), "--quiet"]) == 2
