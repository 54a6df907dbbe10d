"""load_model: every spec form, on checkpoints written by the tests, and every bad input."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file

from vitprobe import UserError, load_model
from vitprobe.models.loaded import as_loaded


def _same_output(a: torch.nn.Module, b: torch.nn.Module, size: int = 224) -> None:
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(a.eval()(x), b.eval()(x), rtol=0, atol=0)


@pytest.fixture(scope="module")
def vit_tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10).eval()


def test_safetensors_file_loads_exactly(tmp_path, vit_tiny):
    path = tmp_path / "vit.safetensors"
    save_file(vit_tiny.state_dict(), str(path))
    loaded = load_model(f"vit_tiny_patch16_224={path}")
    assert loaded.family == "vit" and loaded.num_prefix_tokens == 1
    assert loaded.patch_size == (16, 16) and loaded.grid_size() == (14, 14)
    assert loaded.num_classes == 10  # taken from the checkpoint's head
    assert loaded.data_config["mean"] == (0.5, 0.5, 0.5)
    assert loaded.checkpoint_sha256 and len(loaded.checkpoint_sha256) == 64
    assert not loaded.module.training
    _same_output(loaded.module, vit_tiny)


def test_deit_distilled_state_dict(tmp_path):
    deit = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False).eval()
    path = tmp_path / "deit.pth"
    torch.save(deit.state_dict(), path)
    loaded = load_model(f"deit_tiny_distilled_patch16_224={path}")
    assert loaded.num_prefix_tokens == 2 and loaded.grid_size((224, 160)) == (14, 10)
    _same_output(loaded.module, deit)


def test_checkpoint_dict_with_ddp_prefix(tmp_path):
    resnet = timm.create_model("resnet18", pretrained=False).eval()
    state = {f"module.{k}": v for k, v in resnet.state_dict().items()}
    path = tmp_path / "ckpt.pth"
    torch.save({"epoch": 3, "model": state, "optimizer": {"lr": 0.1}}, path)
    loaded = load_model(f"resnet18={path}")
    assert loaded.family == "cnn" and loaded.patch_size is None
    _same_output(loaded.module, resnet, size=64)


def test_torchvision_resnet_state_dict(tmp_path):
    tv = torchvision.models.resnet18(weights=None).eval()
    path = tmp_path / "tv.pth"
    torch.save(tv.state_dict(), path)
    loaded = load_model(f"resnet18={path}")
    _same_output(loaded.module, tv, size=64)


def test_position_embedding_resampled(tmp_path):
    small = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64).eval()
    path = tmp_path / "small.safetensors"
    save_file(small.state_dict(), str(path))
    loaded = load_model(f"vit_tiny_patch16_224={path}")
    assert loaded.module.pos_embed.shape == (1, 1 + 14 * 14, 192)
    # the class token's embedding is carried over unchanged; the grid part is resampled
    torch.testing.assert_close(loaded.module.pos_embed[:, :1], small.pos_embed[:, :1])


def test_timm_hub_folder(tmp_path, vit_tiny):
    folder = tmp_path / "my-vit"
    folder.mkdir()
    save_file(vit_tiny.state_dict(), str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({
        "architecture": "vit_tiny_patch16_224", "num_classes": 10,
        "pretrained_cfg": {"mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6]},
        "label_names": [f"class{i}" for i in range(10)]}))
    loaded = load_model(str(folder))
    assert loaded.label == "my-vit" and loaded.class_names[3] == "class3"
    assert tuple(loaded.data_config["mean"]) == (0.1, 0.2, 0.3)
    _same_output(loaded.module, vit_tiny)


def test_transformers_vit_folder(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                    num_attention_heads=2, intermediate_size=64, num_labels=3)
    hf = transformers.ViTForImageClassification(config).eval()
    hf.save_pretrained(tmp_path / "hf-vit")
    loaded = load_model(str(tmp_path / "hf-vit"))
    assert loaded.family == "vit" and loaded.num_prefix_tokens == 1
    assert loaded.grid_size() == (4, 4) and loaded.num_classes == 3
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(x), hf(pixel_values=x).logits)


def test_python_callable_spec(tmp_path, monkeypatch):
    (tmp_path / "my_models.py").write_text(textwrap.dedent("""
        import torch
        def build():
            torch.manual_seed(0)
            return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(2))
        def not_a_model():
            return 42
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    loaded = load_model("py:my_models:build")
    assert loaded.family == "cnn" and loaded.label == "build"
    with pytest.raises(UserError, match="not a torch.nn.Module"):
        load_model("py:my_models:not_a_model")
    with pytest.raises(UserError, match="cannot import"):
        load_model("py:my_models:missing")


def test_pickled_code_needs_trust(tmp_path):
    model = torch.nn.Linear(2, 2)
    path = tmp_path / "whole.pt"
    torch.save({"model": model}, path)  # a pickled module, not a state dict
    with pytest.raises(UserError, match="--trust-checkpoint"):
        load_model(f"resnet18={path}")
    with pytest.raises(UserError, match="missing keys: conv1.weight"):
        load_model(f"resnet18={path}", trust_checkpoint=True)


def test_mismatch_names_missing_and_unexpected_keys(tmp_path):
    state = timm.create_model("resnet18", pretrained=False).state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["layer1.0.conv1.weight"]
    path = tmp_path / "bad.safetensors"
    save_file(state, str(path))
    with pytest.raises(UserError) as info:
        load_model(f"resnet18={path}")
    message = str(info.value)
    assert "missing keys: layer1.0.conv1.weight" in message
    assert "unexpected keys: extra.weight" in message


@pytest.mark.parametrize("spec, pattern", [
    ("vit_base_patch16_22", "close matches: vit_base_patch16_224"),
    ("resnet50.not_a_tag", "unknown model 'resnet50.not_a_tag'"),
    ("resnet18=/no/such/file.pth", "checkpoint not found"),
    ("demo:nope", "choose from demo:vit"),
    ("resnet18.a1_in1k", "not in the local Hugging Face cache"),
])
def test_bad_specs(spec, pattern, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(UserError, match=pattern):
        load_model(spec)


def test_cli_bad_model_is_one_line_and_exit_2(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "vitprobe", "sharpness", "--model", "vit_base_patch16_22",
         "--out", str(tmp_path), "--quiet"], capture_output=True, text=True)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "close matches: vit_base_patch16_224" in lines[0]


def test_plain_module_layouts():
    reg = timm.create_model("vit_tiny_patch16_224", pretrained=False, reg_tokens=4,
                            img_size=(32, 48), dynamic_img_size=True)
    loaded = as_loaded(reg)
    assert loaded.num_prefix_tokens == 5 and loaded.input_size == (32, 48)
    assert loaded.grid_size() == (2, 3) and loaded.grid_size((64, 32)) == (4, 2)
    assert as_loaded(timm.create_model("mixer_s16_224", pretrained=False)).family == "other"


def test_timm_models_use_their_test_size_as_validate_py():
    """timm's validate.py resolves the data config with use_test_size=True: resnet50.a1_in1k is
    trained at 224 but evaluated at 288 with crop 1.0 (no weights are needed to read its cfg)."""
    from timm.data import resolve_data_config

    module = timm.create_model("resnet50.a1_in1k", pretrained=False)
    expected = resolve_data_config({}, model=module, use_test_size=True)
    assert expected["input_size"] == (3, 288, 288) and expected["crop_pct"] == 1.0
    loaded = as_loaded(module)
    assert loaded.data_config["input_size"] == (3, 288, 288)
    assert loaded.data_config["crop_pct"] == 1.0 and loaded.input_source == "timm pretrained_cfg"
