"""Every model family end to end: built small with random weights, saved the way its ecosystem
saves it, loaded through a spec, and checked against independent references (the family's own
attention weights, pytorch-grad-cam, the original module's outputs)."""

from __future__ import annotations

import json
from pathlib import Path

import family_models
import numpy as np
import pytest
import torch
import torchvision
from scipy.spatial.distance import cdist

from vitprobe import attention_rollout, attributions, load_model, mean_attention_distance
from vitprobe.attention.rollout import rollout
from vitprobe.cli import main
from vitprobe.data import load_data
from vitprobe.errors import UserError
from vitprobe.models import InputOverrides
from vitprobe.receptive_field import default_layers, effective_receptive_field

FAMILIES = Path(family_models.__file__)


def _py(function: str, path: Path | None = None) -> str:
    return f"py:{FAMILIES}:{function}" + (f"={path}" if path else "")


def _save(module: torch.nn.Module, path: Path, *, wrap: bool = False) -> Path:
    """A training-loop checkpoint dict with DDP prefixes, or a plain state dict."""
    state = module.state_dict()
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}} if wrap else state, path)
    return path


def _same_outputs(loaded, original: torch.nn.Module, shape: tuple[int, ...]) -> None:
    x = torch.randn(2, *shape)
    with torch.no_grad():
        torch.testing.assert_close(loaded.logits(loaded.module(x)), original.eval()(x), rtol=0, atol=0)


# -- references computed from each family's own attention weights ---------------------------

def _mha_reference(module: torch.nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    """Each nn.MultiheadAttention's own weights (need_weights=True, per head), fast path off."""
    found: list[torch.Tensor] = []
    hooks = []
    for sub in module.modules():
        if isinstance(sub, torch.nn.MultiheadAttention):
            def hook(mha, args, kwargs, output):
                query = args[0] if args else kwargs["query"]
                found.append(torch.nn.MultiheadAttention.forward(
                    mha, query, query, query, need_weights=True, average_attn_weights=False)[1])
            hooks.append(sub.register_forward_hook(hook, with_kwargs=True))
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad():
            module(images)
    finally:
        torch.backends.mha.set_fastpath_enabled(True)
        for h in hooks:
            h.remove()
    return found


def _softmax_reference(module: torch.nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    found: list[torch.Tensor] = []
    hooks = [sub.attend.register_forward_hook(lambda m, i, out: found.append(out.detach()))
             for sub in module.modules() if hasattr(sub, "attend")]
    with torch.no_grad():
        module(images)
    for h in hooks:
        h.remove()
    return found


def _hf_reference(hf_model: torch.nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        return list(hf_model(pixel_values=images, output_attentions=True).attentions)


def _raw_distance(attentions: list[torch.Tensor], prefix: int, grid: tuple[int, int],
                  patch: tuple[int, int]) -> np.ndarray:
    """(images, layers, heads) mean attention distance in pixels, by scipy's cdist."""
    rows, cols = np.meshgrid(np.arange(grid[0]), np.arange(grid[1]), indexing="ij")
    centres = np.stack([rows.ravel() * patch[0], cols.ravel() * patch[1]], axis=1)
    distance = cdist(centres, centres)
    per_layer = [(a[:, :, prefix:, prefix:].double().numpy() * distance).sum(-1).mean(-1) for a in attentions]
    return np.stack(per_layer, axis=1)


def _check_attention(loaded, reference: list[torch.Tensor], images: torch.Tensor) -> None:
    """Rollout and mean attention distance equal what the reference attention gives."""
    layout = loaded.attention.layout(tuple(images.shape[-2:]))
    prefix = layout.num_prefix_tokens
    maps = attention_rollout(loaded, images).maps[:, 0]
    expected = rollout(reference, "mean", 0.0, protected=prefix)[:, 0, prefix:]
    np.testing.assert_allclose(maps, expected.reshape(maps.shape).numpy(), rtol=1e-4, atol=1e-6)
    distance = mean_attention_distance(loaded, images)
    np.testing.assert_allclose(distance.raw, _raw_distance(reference, prefix, layout.grid, layout.patch_size),
                               rtol=1e-4)


# -- plain PyTorch ViTs ---------------------------------------------------------------------

@pytest.mark.parametrize("batch_first, norm_first", [(True, False), (False, True)])
def test_transformer_encoder_vit(tmp_path, batch_first, norm_first) -> None:
    torch.manual_seed(0)
    original = family_models.EncoderViT(batch_first=batch_first, norm_first=norm_first).eval()
    path = _save(original, tmp_path / "vit.pth", wrap=True)
    loaded = load_model(_py("encoder_vit", path), model_args={"batch_first": batch_first,
                                                              "norm_first": norm_first})
    assert loaded.family == "vit" and loaded.num_prefix_tokens == 1 and loaded.patch_size == (8, 8)
    assert loaded.input_size == (32, 32) and loaded.input_source == "inferred"  # from pos_embedding
    assert loaded.num_classes == 5 and loaded.checkpoint_sha256
    _same_outputs(loaded, original, (3, 32, 32))
    images = torch.randn(3, 3, 32, 32)
    _check_attention(loaded, _mha_reference(original, images), images)
    assert loaded.attention.sequence_first is (not batch_first)
    assert default_layers(loaded) == ["encoder.layers.0", "encoder.layers.1"]
    assert attributions(loaded, images, method="gradcam").maps.shape == (3, 1, 32, 32)
    erf = effective_receptive_field(loaded, images)
    assert erf.layers == default_layers(loaded) and np.isfinite(erf.raw).all() and erf.raw.max() > 0


def _timm_twin(model: family_models.EncoderViT) -> torch.nn.Module:
    """The timm VisionTransformer with the same weights as a pre-norm, GELU ``EncoderViT``."""
    from timm.models.vision_transformer import VisionTransformer

    twin = VisionTransformer(img_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2, mlp_ratio=2.0,
                             num_classes=5).eval()
    state = {"patch_embed.proj.weight": model.patch.weight, "patch_embed.proj.bias": model.patch.bias,
             "cls_token": model.cls, "pos_embed": model.pos_embedding, "norm.weight": model.norm.weight,
             "norm.bias": model.norm.bias, "head.weight": model.head.weight, "head.bias": model.head.bias}
    for i, layer in enumerate(model.encoder.layers):
        pairs = {"norm1": layer.norm1, "norm2": layer.norm2, "mlp.fc1": layer.linear1, "mlp.fc2": layer.linear2,
                 "attn.proj": layer.self_attn.out_proj}
        for name, module in pairs.items():
            state[f"blocks.{i}.{name}.weight"], state[f"blocks.{i}.{name}.bias"] = module.weight, module.bias
        state[f"blocks.{i}.attn.qkv.weight"] = layer.self_attn.in_proj_weight
        state[f"blocks.{i}.attn.qkv.bias"] = layer.self_attn.in_proj_bias
    twin.load_state_dict(state)
    return twin


def test_gradient_rollout_through_multihead_attention_equals_timm_twin() -> None:
    """Gradient rollout read through nn.MultiheadAttention equals gradient rollout of a timm
    ViT holding the same weights (whose rollout is checked against autograd elsewhere)."""
    from vitprobe import gradient_rollout

    torch.manual_seed(1)
    model = family_models.EncoderViT(norm_first=True, activation="gelu").eval()
    twin = _timm_twin(model)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(images), twin(images), rtol=1e-4, atol=1e-5)
    ours, reference = gradient_rollout(model, images).maps, gradient_rollout(twin, images).maps
    np.testing.assert_allclose(ours, reference, rtol=1e-3, atol=1e-6)
    assert not np.allclose(ours, attention_rollout(twin, images).maps, rtol=1e-2)  # gradients matter


def test_torchvision_vision_transformer_through_py_spec(tmp_path) -> None:
    from torchvision.models.vision_transformer import VisionTransformer

    options = dict(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32,
                   num_classes=4)
    torch.manual_seed(0)
    original = VisionTransformer(**options).eval()
    path = _save(original, tmp_path / "tv_vit.pth")
    loaded = load_model(f"py:torchvision.models.vision_transformer:VisionTransformer={path}",
                        model_args=options)
    assert (loaded.family, loaded.num_prefix_tokens, loaded.input_size) == ("vit", 1, (32, 32))
    _same_outputs(loaded, original, (3, 32, 32))
    images = torch.randn(2, 3, 32, 32)
    _check_attention(loaded, _mha_reference(original, images), images)
    assert default_layers(loaded) == ["encoder.layers.encoder_layer_0", "encoder.layers.encoder_layer_1"]


def test_vit_pytorch_one_channel(tmp_path) -> None:
    torch.manual_seed(0)
    options = {"image_size": 28, "patch_size": 7, "channels": 1, "num_classes": 10}
    original = family_models.lucidrains_vit(**options).eval()
    path = _save(original, tmp_path / "mnist_vit.pt")
    loaded = load_model(_py("lucidrains_vit", path), model_args=options)
    assert loaded.data_config["input_size"] == (1, 28, 28) and loaded.num_prefix_tokens == 1
    assert len(loaded.data_config["mean"]) == 1
    _same_outputs(loaded, original, (1, 28, 28))
    data = load_data("shapes", loaded, num_images=4, batch_size=4)
    images = data[0][0]
    assert images.shape == (4, 1, 28, 28)
    _check_attention(loaded, _softmax_reference(original, images), images)
    assert default_layers(loaded) == ["transformer.layers.0.0", "transformer.layers.1.0"]


# -- transformers folders ---------------------------------------------------------------------

def _hf_folder(tmp_path: Path, kind: str) -> tuple[Path, torch.nn.Module]:
    transformers = pytest.importorskip("transformers")
    config_class, model_class = {
        "vit": ("ViTConfig", "ViTForImageClassification"),
        "deit": ("DeiTConfig", "DeiTForImageClassificationWithTeacher"),
        "dinov2": ("Dinov2Config", "Dinov2ForImageClassification"),
    }[kind]
    config = getattr(transformers, config_class)(
        image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, num_labels=3, id2label={0: "cat", 1: "dog", 2: "fox"},
        label2id={"cat": 0, "dog": 1, "fox": 2})
    torch.manual_seed(0)
    model = getattr(transformers, model_class)(config).eval()
    folder = tmp_path / kind
    model.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(
        {"image_mean": [0.5, 0.4, 0.3], "image_std": [0.2, 0.2, 0.2]}))
    reloaded = getattr(transformers, model_class).from_pretrained(folder, attn_implementation="eager").eval()
    return folder, reloaded


@pytest.mark.parametrize("kind, prefix", [("vit", 1), ("deit", 2), ("dinov2", 1)])
def test_transformers_folders(tmp_path, kind, prefix) -> None:
    folder, hf_model = _hf_folder(tmp_path, kind)
    loaded = load_model(str(folder))
    assert loaded.family == "vit" and loaded.num_prefix_tokens == prefix
    assert loaded.class_names == ["cat", "dog", "fox"] and loaded.data_config["mean"] == (0.5, 0.4, 0.3)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(x), hf_model(pixel_values=x).logits, rtol=0, atol=0)
    _check_attention(loaded, _hf_reference(hf_model, x), x)
    assert len(default_layers(loaded)) == 2
    assert attributions(loaded, x, method="gradcam").maps.shape == (2, 1, 32, 32)


# -- CNNs: torchvision and custom, Grad-CAM against pytorch-grad-cam ---------------------------

def _gradcam_reference(module: torch.nn.Module, layer: torch.nn.Module, images: torch.Tensor) -> np.ndarray:
    """pytorch-grad-cam at ``layer`` for the predicted class, at the layer's resolution, then
    upsampled as vitprobe upsamples (bilinear): equal to vitprobe's map up to the affine
    min-max scaling pytorch-grad-cam applies for display."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    with torch.no_grad():
        targets = module(images).argmax(1)
    resolution = {}

    def record(module, inputs, output) -> None:
        resolution["hw"] = output.shape[-2:]

    hook = layer.register_forward_hook(record)

    class AtLayerResolution(GradCAM):
        def get_target_width_height(self, input_tensor):
            return int(resolution["hw"][1]), int(resolution["hw"][0])

    cam = AtLayerResolution(model=module, target_layers=[layer])
    maps = cam(images, targets=[ClassifierOutputTarget(int(t)) for t in targets])
    hook.remove()
    up = torch.nn.functional.interpolate(torch.from_numpy(maps)[:, None], size=tuple(images.shape[-2:]),
                                         mode="bilinear")
    return up[:, 0].numpy()


def _affinely_equal(ours: np.ndarray, theirs: np.ndarray) -> list[float]:
    """Per image, the correlation of the two maps (1 when one is an affine image of the other)."""
    return [float(np.corrcoef(a.ravel(), b.ravel())[0, 1]) for a, b in zip(ours, theirs)]


CNNS = [
    ("torchvision:resnet18", "layer4", (3, 64, 64)),
    ("torchvision:mobilenet_v2", "features.18", (3, 64, 64)),
    ("torchvision:convnext_tiny", "features.7", (3, 64, 64)),
    ("cifar_resnet", "layer3", (3, 32, 32)),
    ("tutorial_cnn", "conv2", (3, 32, 32)),
    ("mnist_cnn", "5", (1, 28, 28)),
]


@pytest.mark.parametrize("name, last_stage, shape", CNNS)
def test_cnn_families(tmp_path, name, last_stage, shape) -> None:
    torch.manual_seed(0)
    if name.startswith("torchvision:"):
        architecture = name.split(":")[1]
        original = torchvision.models.get_model(architecture, num_classes=7).eval()
        spec = f"{name}={_save(original, tmp_path / 'tv.pth')}"
    else:
        original = getattr(family_models, name)().eval()
        spec = _py(name, _save(original, tmp_path / "cnn.pth", wrap=True))
    loaded = load_model(spec, input=InputOverrides(input_size=shape[1:]))
    assert loaded.family == "cnn" and loaded.data_config["input_size"] == shape
    _same_outputs(loaded, original, shape)
    assert loaded.stage_names()[-1] == last_stage
    assert default_layers(loaded) == loaded.stage_names()
    images = torch.randn(3, *shape)
    ours = attributions(loaded, images, method="gradcam")
    assert ours.options["layer"] == last_stage
    theirs = _gradcam_reference(original, original.get_submodule(last_stage), images)
    assert min(_affinely_equal(ours.maps[:, 0], theirs)) > 0.9999
    # the control: Grad-CAM one stage earlier is a different map, so the check can fail
    earlier = loaded.stage_names()[-2]
    other = attributions(loaded, images, method="gradcam", layer=earlier).maps[:, 0]
    assert min(_affinely_equal(other, theirs)) < 0.99
    erf = effective_receptive_field(loaded, images[:2])
    assert np.isfinite(erf.raw).all() and erf.raw.max() > 0


def test_torchvision_input_configuration_comes_from_its_weights_metadata(tmp_path) -> None:
    original = torchvision.models.resnet18(num_classes=3).eval()
    loaded = load_model(f"torchvision:resnet18={_save(original, tmp_path / 'r.pth')}")
    assert loaded.input_source == "torchvision ResNet18_Weights.IMAGENET1K_V1"
    assert loaded.data_config["input_size"] == (3, 224, 224)
    assert loaded.data_config["interpolation"] == "bilinear"
    assert loaded.data_config["crop_pct"] == pytest.approx(224 / 256)
    assert loaded.num_classes == 3


# -- specs, options and refusals ------------------------------------------------------------------

def test_model_args_and_bad_specs(tmp_path) -> None:
    with pytest.raises(UserError, match="broken_builder.*RuntimeError: this builder is broken"):
        load_model(_py("broken_builder"))
    with pytest.raises(UserError, match="bad --model-args"):
        load_model(f"torchvision:resnet18={tmp_path / 'x.pth'}", model_args={"nope": 1})
    with pytest.raises(UserError, match="unknown torchvision model 'resnet181'.*resnet18"):
        load_model(f"torchvision:resnet181={tmp_path / 'x.pth'}")
    with pytest.raises(UserError, match="names no checkpoint file after '='"):
        load_model("resnet18=")
    with pytest.raises(UserError, match="names no architecture before '='"):
        load_model(f"={tmp_path}")
    original = family_models.CifarResNet().eval()
    path = _save(original, tmp_path / "r.pth")
    with pytest.raises(UserError, match="missing keys: layer1.1"):
        load_model(_py("cifar_resnet", path), model_args={"n": 2})
    with pytest.raises(UserError, match="fails on a .*--input-size"):
        load_model(_py("cifar_resnet", path), input=InputOverrides(in_chans=1))


def test_one_channel_cnn_gets_grayscale_shapes(tmp_path) -> None:
    with pytest.raises(UserError, match=r"fails on a \(1, 1, 224, 224\) input .*--input-size"):
        load_model(_py("mnist_cnn"))  # nothing in the model tells its size: it must be given
    loaded = load_model(_py("mnist_cnn"), input=InputOverrides(input_size=(28, 28), mean=(0.1307,),
                                                                 std=(0.3081,)))
    images = load_data("shapes", loaded, num_images=2)[0][0]
    assert images.shape == (2, 1, 28, 28)
    rgb = load_data("shapes", load_model(_py("cifar_resnet")), num_images=2, input_size=(28, 28))[0][0]
    from vitprobe.models.input_config import IMAGENET_MEAN, IMAGENET_STD

    pixels = rgb * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    luma = (pixels * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    torch.testing.assert_close(images, (luma - 0.1307) / 0.3081, rtol=1e-5, atol=1e-5)


def _class_folders(root: Path, names: list[str]) -> Path:
    from PIL import Image

    for index, name in enumerate(names):
        (root / name).mkdir(parents=True)
        Image.new("RGB", (32, 32), (40 * index, 100, 200)).save(root / name / "a.png")
    return root


def test_class_folders_must_match_the_model(tmp_path, capsys) -> None:
    model = family_models.CifarResNet(num_classes=4).eval()
    spec = _py("cifar_resnet", _save(model, tmp_path / "c.pth"))
    folders = _class_folders(tmp_path / "data", ["deer", "dog", "ship"])
    argv = ["evaluate", "--model", spec, "--model-args", "num_classes=4", "--data", str(folders),
            "--input-size", "32", "--out", str(tmp_path / "out"), "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "3 class folders" in err[-1] and "has 4 classes" in err[-1] and "--class-names" in err[-1]
    names = tmp_path / "names.txt"
    names.write_text("cat\ndog\ndeer\nship\n")
    assert main([*argv, "--class-names", str(names)]) == 0
    loaded = load_model(spec, model_args={"num_classes": 4}, input=InputOverrides(input_size=(32, 32)))
    data = load_data(str(folders), loaded, class_names=names)
    assert data.labels().tolist() == [2, 1, 3]  # deer, dog, ship by name, not by folder order
    record = json.loads((tmp_path / "out" / "evaluate.json").read_text())
    assert record["models"][0]["input_source"] == "inferred + command line (input_size)"
    assert record["data"][loaded.label]["class_mapping"] == "by name"


def test_a_failing_model_does_not_stop_the_others(tmp_path, capsys) -> None:
    good = _py("tutorial_cnn")
    argv = ["evaluate", "--model", _py("broken_builder"), "--model", good, "--model", "resnet18=nope.pth",
            "--input-size", "32", "--num-images", "8", "--out", str(tmp_path), "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "this builder is broken" in err and "checkpoint not found" in err and "2 of 3 models failed" in err
    record = json.loads((tmp_path / "evaluate.json").read_text())
    assert record["status"] == "partial" and [m["label"] for m in record["models"]] == ["tutorial_cnn"]
    assert len(record["failed_models"]) == 2
    table = (tmp_path / "evaluate.csv").read_text()
    assert "tutorial_cnn" in table


def test_attention_command_on_non_timm_models(tmp_path) -> None:
    """rollout on the plain ViT, Grad-CAM at a named layer on the CIFAR ResNet, in one run."""
    argv = ["attention", "--model", _py("encoder_vit"), "--model", _py("cifar_resnet"),
            "--layer", "layer2", "--input-size", "32", "--num-images", "4", "--out", str(tmp_path),
            "--quiet"]
    assert main(argv) == 0
    table = (tmp_path / "attention.csv").read_text()
    assert "mean_attention_distance" in table and "gradcam" in table
    bad = ["attention", "--model", _py("cifar_resnet"), "--layer", "layer9", "--input-size", "32",
           "--num-images", "2", "--out", str(tmp_path / "bad"), "--quiet"]
    assert main(bad) == 2


def test_unreadable_attention_is_named() -> None:
    class MyAttention(torch.nn.Module):
        def forward(self, x):
            return x.softmax(-1) @ x

    class Custom(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.patch = torch.nn.Conv2d(3, 8, 8, 8)
            self.attn = MyAttention()
            self.head = torch.nn.Linear(8, 2)

        def forward(self, x):
            return self.head(self.attn(self.patch(x).flatten(2).transpose(1, 2)).mean(1))

    from vitprobe.models import as_loaded

    loaded = as_loaded(Custom())
    with pytest.raises(UserError, match="MyAttention is not one vitprobe can read"):
        attention_rollout(loaded, torch.randn(1, 3, 32, 32))


def test_quiet_hides_the_transformers_loading_bar(tmp_path) -> None:
    import os
    import subprocess
    import sys

    folder, _ = _hf_folder(tmp_path, "vit")
    env = {key: value for key, value in os.environ.items() if key != "HF_HUB_DISABLE_PROGRESS_BARS"}
    argv = [sys.executable, "-m", "vitprobe", "throughput", "--model", str(folder), "--batch-size", "2",
            "--warmup", "0", "--steps", "1", "--out", str(tmp_path / "out")]
    loud = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    quiet = subprocess.run([*argv, "--quiet"], capture_output=True, text=True, env=env, timeout=300)
    assert loud.returncode == quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == "" and "Loading" not in quiet.stderr
    assert loud.stderr  # the control: without --quiet there is something to hide
