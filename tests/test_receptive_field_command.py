"""``vitprobe receptive-field`` end to end on real (small, untrained) timm models."""

from __future__ import annotations

import math
import textwrap

import numpy as np
import pandas as pd
import pytest

from vitprobe.cli import main

MODELS = textwrap.dedent("""
    import torch
    from timm.models.resnet import BasicBlock, ResNet
    from timm.models.vision_transformer import VisionTransformer

    def vit():
        torch.manual_seed(0)
        return VisionTransformer(img_size=16, patch_size=4, embed_dim=16, depth=2, num_heads=2,
                                 mlp_ratio=2.0, num_classes=4)

    def resnet():
        torch.manual_seed(0)
        return ResNet(BasicBlock, [1, 1, 1, 1], channels=(4, 4, 4, 4), stem_width=4,
                      num_classes=4)
""")


@pytest.fixture
def model_module(tmp_path, monkeypatch):
    (tmp_path / "rf_command_models.py").write_text(MODELS)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "rf_command_models"


def test_command_writes_csv_and_figures(tmp_path, model_module):
    out = tmp_path / "out"
    argv = ["receptive-field", "--model", f"py:{model_module}:vit", "--model",
            f"py:{model_module}:resnet", "--num-images", "4", "--batch-size", "3",
            "--input-size", "24", "--gradient", "abs", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    table = pd.read_csv(out / "receptive-field.csv")
    assert list(table.columns)[:5] == ["model", "metric", "layer", "threshold", "value"]
    assert set(table["model"]) == {"vit", "resnet"}
    sizes = table.query("model == 'resnet' and metric == 'theoretical_size'")
    # BasicBlock [1, 1, 1, 1]: stem 11 (j 4); each stage adds its two 3x3 convs
    assert dict(zip(sizes["layer"], sizes["value"])) == {"layer1": 27, "layer2": 51,
                                                         "layer3": 99, "layer4": 195}
    vit = table.query("model == 'vit'")
    assert set(vit["layer"]) == {"blocks.0", "blocks.1"}
    assert "theoretical_size" not in set(vit["metric"])
    distance = vit.query("metric == 'mean_attention_distance'")["value"]
    # a 6x6 grid of 4-pixel patches: distances between patch centres lie in (0, 20 sqrt 2]
    assert len(distance) == 2 and ((distance > 0) & (distance <= 20 * math.sqrt(2))).all()
    ratios = table.query("metric in ['square_area_ratio', 'top_pixels_ratio']")["value"]
    assert ((ratios > 0) & (ratios <= 1)).all()
    for name in ("receptive-field-erf.png", "receptive-field-extent.png"):
        assert (out / "figures" / name).stat().st_size > 0
    assert (out / "receptive-field.json").exists()

    # the command's numbers are the API's on the same images
    import vitprobe
    from vitprobe.data import load_data

    model = vitprobe.load_model(f"py:{model_module}:resnet")
    data = load_data("shapes", model, num_images=4, batch_size=3, seed=0, input_size=(24, 24))
    frame = vitprobe.effective_receptive_field(model, data, gradient="abs").to_frame()
    ours = table.query("model == 'resnet'").reset_index(drop=True)
    np.testing.assert_allclose(ours["value"], frame["value"], rtol=1e-6)


def test_missing_layer_is_a_user_error(tmp_path, model_module, capsys):
    argv = ["receptive-field", "--model", f"py:{model_module}:resnet", "--layer", "layer9",
            "--num-images", "2", "--out", str(tmp_path / "out"), "--quiet"]
    assert main(argv) == 2
    assert "no layer 'layer9'" in capsys.readouterr().err


def test_two_torchrun_ranks_give_the_one_process_maps(tmp_path, model_module):
    """Ranks share the batches and all-reduce the summed maps: the CSV equals one process's."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    common = ["receptive-field", "--model", f"py:{model_module}:resnet", "--num-images", "5",
              "--batch-size", "2", "--quiet"]
    assert main([*common, "--out", str(tmp_path / "single")]) == 0
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path]),
           "OMP_NUM_THREADS": "1"}
    torchrun = Path(sys.executable).with_name("torchrun")
    process = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "vitprobe", *common,
         "--out", str(tmp_path / "ranks")],
        capture_output=True, text=True, timeout=180, env=env)
    assert process.returncode == 0, process.stderr[-3000:]
    single = pd.read_csv(tmp_path / "single" / "receptive-field.csv").drop(columns="seconds")
    ranks = pd.read_csv(tmp_path / "ranks" / "receptive-field.csv").drop(columns="seconds")
    pd.testing.assert_frame_equal(single, ranks, rtol=1e-6)
