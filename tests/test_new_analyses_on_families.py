"""The ViT-versus-CNN analyses (similarity, frequency, per-block Hessian, corruptions, map quality)
on the families the loaders support, through the command line: a ViT on nn.TransformerEncoder,
a transformers folder, a torchvision ResNet, a CIFAR ResNet from a paper's repository and a
1-channel MNIST CNN (too small for ImageNet-C, which is said in one line)."""

from __future__ import annotations

import json
from pathlib import Path

import family_models
import pandas as pd
import pytest
import torch
import torchvision

from vitprobe.cli import main

FAMILIES = Path(family_models.__file__)


def _spec(tmp_path: Path, family: str) -> tuple[str, list[str]]:
    """A model spec and the input options it needs."""
    torch.manual_seed(0)
    if family == "torchvision:resnet18":
        path = tmp_path / "tv.pth"
        torch.save(torchvision.models.resnet18(num_classes=4).state_dict(), path)
        return f"torchvision:resnet18={path}", ["--input-size", "64"]
    if family == "transformers":
        transformers = pytest.importorskip("transformers")
        config = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=2,
                                        num_attention_heads=2, intermediate_size=32, num_labels=4)
        folder = tmp_path / "hf"
        transformers.ViTForImageClassification(config).save_pretrained(folder)
        return str(folder), []
    return f"py:{FAMILIES}:{family}", ["--input-size", "28" if family == "mnist_cnn" else "32"]


@pytest.mark.parametrize("family", ["encoder_vit", "transformers", "torchvision:resnet18", "cifar_resnet",
                                    "mnist_cnn"])
def test_each_new_analysis_runs_on_the_family(tmp_path, family, capsys):
    spec, inputs = _spec(tmp_path, family)
    common = ["--model", spec, *inputs, "--num-images", "8", "--batch-size", "8", "--quiet"]
    runs = {
        "similarity": [], "frequency": [], "map-quality": ["--method", "gradcam", "--steps", "4"],
        "sharpness": ["--per-block", "--no-sam", "--max-iter", "5"],
        "corruptions": ["--corruption", "contrast", "--severity", "2"],
    }
    for command, options in runs.items():
        out = tmp_path / command
        code = main([command, *common, *options, "--out", str(out)])
        err = capsys.readouterr().err
        if family == "mnist_cnn" and command in ("corruptions", "sharpness"):
            # 28-pixel images; stages that are ReLU and pooling modules, without parameters
            errors = [line for line in err.strip().splitlines() if not line.startswith("vitprobe: warning:")]
            assert code == 2 and len(errors) == 1, err
            assert ("at least 32x32" if command == "corruptions" else "name the blocks") in err
            if command == "sharpness":
                assert main([command, *common, *options, "--block", "0", "--block", "3", "--out",
                             str(out)]) == 0
            continue
        assert code == 0, (command, err)
        assert json.loads((out / f"{command}.json").read_text())["status"] == "complete"
        table = pd.read_csv(out / f"{command}.csv")
        assert table["value"].notna().any(), command
        if command == "sharpness":
            assert len(table[table.metric == "block_lambda_1"]) >= 2
