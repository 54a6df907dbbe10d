"""``vitprobe attention`` end to end on real timm models, through the real CLI."""

from __future__ import annotations

import textwrap

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from vitprobe.cli import main

BUILDERS = textwrap.dedent('''
    from timm.models.deit import VisionTransformerDistilled
    from timm.models.resnet import BasicBlock, ResNet

    def small_deit():
        return VisionTransformerDistilled(img_size=32, patch_size=8, embed_dim=16, depth=3,
                                          num_heads=2, num_classes=4)

    def small_resnet():
        return ResNet(BasicBlock, [1, 1, 1, 1], channels=(4, 4, 4, 4), stem_width=4, num_classes=4)
''')


@pytest.fixture
def builders(tmp_path, monkeypatch):
    (tmp_path / "attention_builders.py").write_text(BUILDERS)
    monkeypatch.syspath_prepend(str(tmp_path))
    return ["--model", "py:attention_builders:small_deit", "--model", "py:attention_builders:small_resnet"]


def test_attention_command_writes_rows_and_figures(tmp_path, builders) -> None:
    out = tmp_path / "out"
    status = main(["attention", *builders, "--num-images", "4", "--batch-size", "3", "--out", str(out),
                   "--quiet", "--source", "both", "--discard", "0.5", "--layers", "0", "-1",
                   "--heads", "1", "--query", "1", "2"])
    assert status == 0
    table = pd.read_csv(out / "attention.csv")
    distance = table[table.metric == "mean_attention_distance"]
    assert set(distance.model) == {"small_deit"}
    assert len(distance) == 3 * 2
    assert {"model", "metric", "layer", "head", "value", "ci_low", "ci_high"} <= set(table.columns)
    assert (distance.ci_low <= distance.value).all() and (distance.value <= distance.ci_high).all()
    assert len(table[table.metric == "uniform_attention_distance"]) == 1
    assert set(table[table.metric == "rollout_map_entropy"].source) == {"cls", "dist"}
    assert "gradcam_map_entropy" in set(table[table.model == "small_resnet"].metric)
    figures = {p.name for p in (out / "figures").iterdir()}
    assert {"attention_overlay.png", "attention_distance.png", "raw_attention_small_deit.png"} <= figures
    assert (out / "attention.json").exists()


def test_attention_command_on_image_files(tmp_path, builders) -> None:
    rng = np.random.default_rng(0)
    files = []
    for i in range(2):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(path)
        files.append(str(path))
    out = tmp_path / "out"
    assert main(["attention", *builders[:2], "--images", *files, "--method", "grad-rollout",
                 "--out", str(out), "--quiet"]) == 0
    table = pd.read_csv(out / "attention.csv")
    assert table[table.metric == "mean_attention_distance"].images.unique().tolist() == [2]
    assert "grad_rollout_map_entropy" in set(table.metric)


def test_attention_command_rejects_bad_options(tmp_path, builders, capsys) -> None:
    assert main(["attention", *builders[:2], "--discard", "1.5", "--out", str(tmp_path), "--quiet"]) == 2
    assert "--discard" in capsys.readouterr().err
    assert main(["attention", *builders[:2], "--layers", "7", "--num-images", "2",
                 "--out", str(tmp_path), "--quiet"]) == 2
    assert "layer 7 does not exist" in capsys.readouterr().err
