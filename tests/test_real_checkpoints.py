"""Checkpoints as researchers have them, saved in the forms their tools wrote (not by today's
``torch.save`` defaults), loaded exactly when PyTorch's own strict ``load_state_dict`` loads them:

- PyTorch 0.3's legacy container (``_rebuild_tensor``, no ``_metadata``, BatchNorm without
  ``num_batches_tracked``), as the most used CIFAR ResNet-20 checkpoints were saved,
  ``{'state_dict': {'module.' ...}, 'best_prec1': ...}``;
- the widely copied CIFAR training scripts' ``{'net': ..., 'acc': ..., 'epoch': ...}``;
- a real PyTorch Lightning ``.ckpt`` of a LightningModule that wraps the network as ``model``;
- a pickled whole model whose source has changed since (``--trust-checkpoint``).

The ground truth is PyTorch itself (its strict loading, called in the same test), the original
module's outputs, and torchvision's ``ImageFolder`` with ``ToTensor`` and ``Normalize`` for the
preprocessing and top-1 of the README's CIFAR example.
"""

from __future__ import annotations

import json
import pickle
import sys
import types
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn

import vitprobe
from tests.family_models import CifarResNet, OneSequentialResNet
from vitprobe.cli import main
from vitprobe.errors import UserError

FAMILY = Path(__file__).with_name("family_models.py")
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def torch03_save(obj: object, path: Path) -> None:
    """``torch.save`` as PyTorch 0.3 wrote files: the legacy (pre-zip) container with tensors
    rebuilt by ``torch._utils._rebuild_tensor(storage, offset, size, stride)``, pickle protocol 2.
    (Dicts built here carry no ``_metadata``, as 0.3's state dicts had none.)"""
    class Pickler(pickle.Pickler):
        def reducer_override(self, value):
            if type(value) is torch.Tensor:
                storage = torch.storage.TypedStorage(wrap_storage=value.untyped_storage(), dtype=value.dtype,
                                                     _internal=True)
                return torch._utils._rebuild_tensor, (storage, value.storage_offset(), tuple(value.shape),
                                                      value.stride())
            return NotImplemented

    with open(path, "wb") as handle:
        torch.serialization._legacy_save(obj, handle, types.SimpleNamespace(Pickler=Pickler, dump=pickle.dump), 2)


def without_batch_counts(state: dict[str, torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
    """A state dict as saved before BatchNorm counted batches: no buffers, no ``_metadata``."""
    return OrderedDict((k, v) for k, v in state.items() if not k.endswith("num_batches_tracked"))


def trained_cifar_resnet(images: torch.Tensor, labels: torch.Tensor) -> CifarResNet:
    """A ResNet-20 trained for a few steps on ``images``, so that its top-1 is neither 0 nor 1."""
    torch.manual_seed(0)
    model = CifarResNet(n=3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.train()
    for _ in range(30):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def cifar(tmp_path_factory) -> dict:
    """A CIFAR-10-like test folder (32x32 PNGs, classes by colour, noisy) and a trained
    ResNet-20 saved by PyTorch 0.3's rules."""
    root = tmp_path_factory.mktemp("cifar")
    rng = np.random.default_rng(0)
    folder = root / "test"
    for index, name in enumerate(CLASSES):
        (folder / name).mkdir(parents=True)
        colour = np.array([(index * 67) % 256, (index * 131) % 256, (index * 29) % 256])
        for k in range(4):
            pixels = np.clip(colour + rng.normal(0, 60, (32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / name / f"{k}.png")
    plain = torchvision.datasets.ImageFolder(folder, transform=torchvision.transforms.Compose(
        [torchvision.transforms.ToTensor(), torchvision.transforms.Normalize(CIFAR_MEAN, CIFAR_STD)]))
    images = torch.stack([plain[i][0] for i in range(len(plain))])
    labels = torch.tensor(plain.targets)
    model = trained_cifar_resnet(images, labels)
    with torch.no_grad():
        predictions = model(images).argmax(1)
    wrapped = OrderedDict(("module." + k, v) for k, v in without_batch_counts(model.state_dict()).items())
    torch03_save({"state_dict": wrapped, "best_prec1": 91.25, "epoch": 182}, root / "resnet20.th")
    return {"root": root, "folder": folder, "model": model, "images": images, "labels": labels,
            "top1": int((predictions == labels).sum()) / len(labels), "checkpoint": root / "resnet20.th"}


def test_the_old_file_really_is_old(cifar) -> None:
    """The checkpoint is PyTorch 0.3's container: not a zip file, tensors by ``_rebuild_tensor``,
    no ``_metadata``, no ``num_batches_tracked``; and PyTorch itself loads it strictly."""
    raw = cifar["checkpoint"].read_bytes()
    assert not raw.startswith(b"PK") and b"_rebuild_tensor\n" in raw and b"_rebuild_tensor_v2" not in raw
    loaded = torch.load(cifar["checkpoint"], weights_only=True)
    assert not hasattr(loaded["state_dict"], "_metadata")
    assert not any(k.endswith("num_batches_tracked") for k in loaded["state_dict"])
    peer = CifarResNet(n=3)
    peer.load_state_dict({k[len("module."):]: v for k, v in loaded["state_dict"].items()}, strict=True)


def test_readme_cifar_example_gives_plain_pytorch_top1(cifar, tmp_path, capsys) -> None:
    """The README's worked example: a 0.3-era ResNet-20 checkpoint through ``py:``, CIFAR
    statistics, no crop given: the images equal torchvision's ToTensor + Normalize, the logits
    the original module's, and ``vitprobe evaluate``'s top-1 plain PyTorch's. The control: a
    0.875 centre crop (the old default) changes the images."""
    spec = f"py:{FAMILY}:cifar_resnet={cifar['checkpoint']}"
    overrides = vitprobe.InputOverrides(input_size=(32, 32), mean=CIFAR_MEAN, std=CIFAR_STD)
    model = vitprobe.load_model(spec, model_args={"n": 3}, input=overrides)
    assert model.data_config["crop_pct"] == 1.0 and "crop_pct" in model.guessed
    data = vitprobe.load_data(str(cifar["folder"]), model, num_images=40, batch_size=40)
    images, labels = data[0]
    order = torch.argsort(labels * 1000 + torch.arange(len(labels)))  # the subset is shuffled
    assert torch.equal(labels[order], cifar["labels"])
    torch.testing.assert_close(images[order], cifar["images"], atol=1e-6, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(model.module(images), cifar["model"](images))
    cropped = vitprobe.load_model(spec, model_args={"n": 3}, input=vitprobe.InputOverrides(
        input_size=(32, 32), mean=CIFAR_MEAN, std=CIFAR_STD, crop_pct=0.875))
    assert not torch.allclose(vitprobe.load_data(str(cifar["folder"]), cropped, num_images=40,
                                                 batch_size=40)[0][0], images, atol=1e-2)
    out = tmp_path / "out"
    code = main(["evaluate", "--model", spec, "--model-args", "n=3", "--input-size", "32",
                 "--mean", *map(str, CIFAR_MEAN), "--std", *map(str, CIFAR_STD),
                 "--data", str(cifar["folder"]), "--num-images", "40", "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "no centre crop (crop-pct 1.0)" in err  # still said when size, mean and std are given
    rows = __import__("pandas").read_csv(out / "evaluate.csv")
    top1 = rows[(rows.metric == "top1") | (rows.metric == "accuracy")].value.iloc[0]
    assert 0 < cifar["top1"] < 1 and top1 == pytest.approx(cifar["top1"], abs=1e-9)


@pytest.mark.parametrize("form", ["torchvision", "timm", "py"])
def test_strict_loading_accepts_exactly_what_pytorch_accepts(form, tmp_path) -> None:
    """Without ``num_batches_tracked``: a dict that says it is of today's BatchNorm version
    (``_metadata`` kept) is refused by PyTorch and by vitprobe, naming the buffers; the same dict
    with ``_metadata`` stripped (as saved before 2018) is accepted by both. A really missing
    weight stays refused by both."""
    import timm

    builders = {
        "torchvision": (lambda: torchvision.models.resnet18(num_classes=4), "torchvision:resnet18"),
        "timm": (lambda: timm.create_model("resnet18", num_classes=4), "resnet18"),
        "py": (lambda: CifarResNet(num_classes=4), f"py:{FAMILY}:cifar_resnet"),
    }
    build, prefix = builders[form]
    state = build().state_dict()
    versioned = without_batch_counts(state)
    versioned._metadata = state._metadata
    unversioned = without_batch_counts(state)
    lacking = without_batch_counts(state)
    del lacking["conv1.weight"]

    def pytorch_accepts(candidate) -> bool:
        try:
            build().load_state_dict(candidate, strict=True)
            return True
        except RuntimeError:
            return False

    for name, candidate, accepted in (("versioned", versioned, False), ("unversioned", unversioned, True),
                                      ("lacking", lacking, False)):
        path = tmp_path / f"{name}.pth"
        torch.save(candidate, path)
        assert pytorch_accepts(torch.load(path, weights_only=True)) is accepted, name
        spec = f"{prefix}={path}"
        if accepted:
            model = vitprobe.load_model(spec, model_args={"num_classes": 4} if form == "py" else None)
            for key, value in candidate.items():
                torch.testing.assert_close(model.module.state_dict()[key], value)
            continue
        with pytest.raises(UserError) as refusal:
            vitprobe.load_model(spec, model_args={"num_classes": 4} if form == "py" else None)
        message = str(refusal.value)
        assert "missing keys: " in message
        if name == "versioned":
            assert "bn1.num_batches_tracked" in message and "conv1.weight" not in message
        else:
            assert "conv1.weight" in message and "num_batches_tracked" not in message


def test_training_script_forms_are_found(cifar, tmp_path) -> None:
    """``{'net': DataParallel dict, 'acc', 'epoch'}`` (the CIFAR training scripts), timm's train
    checkpoint (``state_dict`` and ``state_dict_ema``: the first is taken) and a dict whose
    tensors match nothing (refused, listing what was found)."""
    model = cifar["model"]
    state = model.state_dict()
    torch.save({"net": OrderedDict(("module." + k, v) for k, v in state.items()), "acc": 93.1, "epoch": 199},
               tmp_path / "ckpt.pth")
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in state.items()}
    torch.save({"epoch": 3, "arch": "resnet20", "state_dict": state, "state_dict_ema": ema,
                "optimizer": torch.optim.SGD(model.parameters(), lr=0.1).state_dict(), "version": 2},
               tmp_path / "timm_train.pth.tar")
    torch.save({"encoder": {"w": torch.zeros(3)}, "decoder": {"v": torch.zeros(2)}}, tmp_path / "other.pth")
    images = cifar["images"][:8]
    for name in ("ckpt.pth", "timm_train.pth.tar"):
        loaded = vitprobe.load_model(f"py:{FAMILY}:cifar_resnet={tmp_path / name}", model_args={"n": 3})
        with torch.no_grad():
            torch.testing.assert_close(loaded.module(images), model(images))
    with pytest.raises(UserError, match=r"no dict of tensors in .*other.pth matches CifarResNet .*"
                                         r"found \['encoder'\]: w; \['decoder'\]: v"):
        vitprobe.load_model(f"py:{FAMILY}:cifar_resnet={tmp_path / 'other.pth'}", model_args={"n": 3})


def test_lightning_checkpoint_of_a_wrapped_network(cifar, tmp_path) -> None:
    """A real ``Trainer.save_checkpoint`` of a LightningModule holding the network as ``model``:
    its ``state_dict`` keys are ``model.*``; the network's weights load with the prefix stripped."""
    lightning = pytest.importorskip("lightning")

    class Classifier(lightning.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = CifarResNet(n=1)

        def training_step(self, batch, index):
            images, labels = batch
            return nn.functional.cross_entropy(self.model(images), labels)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05)

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(cifar["images"], cifar["labels"]),
                                       batch_size=8)
    trainer = lightning.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_progress_bar=False,
                                enable_model_summary=False, default_root_dir=tmp_path)
    classifier = Classifier()
    trainer.fit(classifier, data)
    trainer.save_checkpoint(tmp_path / "mnist.ckpt")
    saved = torch.load(tmp_path / "mnist.ckpt", weights_only=False)
    assert all(k.startswith("model.") for k in saved["state_dict"]) and "optimizer_states" in saved
    loaded = vitprobe.load_model(f"py:{FAMILY}:cifar_resnet={tmp_path / 'mnist.ckpt'}")
    classifier.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(cifar["images"][:4]), classifier.model(cifar["images"][:4]))


LENET = '''
import torch.nn as nn


class LeNet5(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.Tanh(), nn.AvgPool2d(2),
                                      nn.Conv2d(6, 16, 5), nn.Tanh(), nn.AvgPool2d(2))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(400, 84), nn.Tanh(), nn.Linear(84, 10))

    def forward(self, x):
        return self.classifier(self.features(x))
'''


def test_pickled_model_whose_source_changed(tmp_path, capsys) -> None:
    """A whole LeNet-5 pickled in the legacy container, its class edited since: refused without
    ``--trust-checkpoint``; with it, one warning line (not PyTorch's diff per class) and the
    weights of the pickled model."""
    source = tmp_path / "lenet.py"
    source.write_text(LENET)
    sys.path.insert(0, str(tmp_path))
    try:
        import lenet

        torch.manual_seed(3)
        model = lenet.LeNet5().eval()
        torch.save(model, tmp_path / "lenet5.pth", _use_new_zipfile_serialization=False)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("lenet", None)
    source.write_text(LENET.replace("class LeNet5(nn.Module):", "class LeNet5(nn.Module):\n    \"\"\"LeNet-5.\"\"\""))
    spec = f"py:{source}:LeNet5={tmp_path / 'lenet5.pth'}"
    out = str(tmp_path / "out")
    assert main(["evaluate", "--model", spec, "--data", "shapes", "--in-chans", "1", "--input-size", "28",
                 "--num-images", "4", "--out", out, "--quiet"]) == 2
    assert "--trust-checkpoint" in capsys.readouterr().err
    code = main(["throughput", "--model", spec, "--trust-checkpoint", "--in-chans", "1", "--input-size", "28",
                 "--steps", "1", "--warmup", "0", "--out", out, "--quiet"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "SourceChangeWarning" not in err and "---" not in err
    assert sum("source has changed" in line for line in err.splitlines()) == 1
    loaded = vitprobe.load_model(spec, trust_checkpoint=True,
                                 input=vitprobe.InputOverrides(in_chans=1, input_size=(28, 28)))
    images = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(images), model(images))


def test_py_file_imports_its_sibling_modules(tmp_path, monkeypatch) -> None:
    """A builder file that imports a module beside it loads from any working directory, and
    ``sys.path`` is left as it was."""
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "blocks.py").write_text("import torch.nn as nn\n\n\ndef block():\n"
                                                 "    return nn.Conv2d(3, 4, 3)\n")
    (tmp_path / "repo" / "net.py").write_text("import torch.nn as nn\nfrom blocks import block\n\n\n"
                                              "def build():\n    return nn.Sequential(block(), nn.Flatten(),"
                                              " nn.LazyLinear(2))\n")
    monkeypatch.chdir(tmp_path)
    before = list(sys.path)
    try:
        loaded = vitprobe.load_model(f"py:{tmp_path / 'repo' / 'net.py'}:build",
                                     input=vitprobe.InputOverrides(input_size=(8, 8)))
    finally:
        sys.modules.pop("blocks", None)
        sys.modules.pop("net", None)
    assert sys.path == before and isinstance(loaded.module[0], nn.Conv2d)


def test_what_was_guessed_is_said(capsys) -> None:
    """An MLP without convolutions or size attributes: the warning says its size and channels
    are defaults (not "read off its layers"), and that no crop is applied."""
    loaded = vitprobe.load_model(f"py:{FAMILY}:mnist_mlp", input=vitprobe.InputOverrides(
        input_size=(28, 28), in_chans=1))
    err = capsys.readouterr().err
    assert "read off" not in err and "no centre crop (crop-pct 1.0)" in err and "mean and std" in err
    assert loaded.data_config["crop_pct"] == 1.0 and set(loaded.guessed) == {"mean", "interpolation", "crop_pct"}
    vitprobe.load_model(f"py:{FAMILY}:cifar_resnet")
    err = capsys.readouterr().err
    assert "3 channels read off its first layer" in err and "224x224 by default" in err


def test_stages_inside_one_container() -> None:
    """Blocks of three resolutions in one ``nn.Sequential``: a stage at each resolution (the last
    block there), as for the same network built with ``layer1`` ... ``layer3``."""
    model = vitprobe.load_model(f"py:{FAMILY}:one_sequential_resnet",
                                input=vitprobe.InputOverrides(input_size=(32, 32)))
    stages = model.stages()
    assert [s.name for s in stages] == ["blocks.1", "blocks.3", "blocks.5"]
    assert [s.grid for s in stages] == [(32, 32), (16, 16), (8, 8)] and [s.channels for s in stages] == [8, 16, 32]
    split = vitprobe.load_model(f"py:{FAMILY}:cifar_resnet", model_args={"n": 2},
                                input=vitprobe.InputOverrides(input_size=(32, 32)))
    assert [(s.grid, s.channels) for s in split.stages()] == [(s.grid, s.channels) for s in stages]


def test_similarity_and_frequency_refuse_a_model_without_stages(tmp_path, capsys) -> None:
    """An MLP has no feature maps: CKA of its output with itself would be 1 by construction, so
    both commands refuse in one line naming layers ``--layer`` can take; with them, CKA runs."""
    spec = f"py:{FAMILY}:mnist_mlp"
    common = ["--model", spec, "--in-chans", "1", "--input-size", "28", "--num-images", "8", "--quiet"]
    for command in ("similarity", "frequency"):
        code = main([command, *common, "--out", str(tmp_path / command)])
        lines = capsys.readouterr().err.strip().splitlines()
        assert code == 2, lines
        assert "finds no blocks or feature stages" in lines[-1] and "--layer" in lines[-1]
        assert "layers, layers.1" in lines[-1]
    assert main(["similarity", *common, "--layer", "layers.1", "--layer", "layers.3",
                 "--out", str(tmp_path / "ok")]) == 0
    record = json.loads((tmp_path / "ok" / "similarity.json").read_text())
    assert record["status"] == "complete"


def test_gradcam_layer_is_recorded(tmp_path) -> None:
    """The layer Grad-CAM chose by itself is in the CSV, the JSON and the figure's title."""
    out = tmp_path / "out"
    assert main(["attention", "--model", "demo:resnet", "--num-images", "2", "--out", str(out), "--quiet"]) == 0
    rows = __import__("pandas").read_csv(out / "attention.csv")
    gradcam = rows[rows.metric.str.startswith("gradcam")]
    assert set(gradcam.target_layer) == {"layer4"}
    record = json.loads((out / "attention.json").read_text())
    assert record["choices"]["demo:resnet"] == {"gradcam_layers": ["layer4"]}


def test_one_sequential_resnet_stage_outputs_are_what_the_blocks_return() -> None:
    """Control for the stage tracer: the traced stage's map is the named block's own output."""
    model = OneSequentialResNet().eval()
    loaded = vitprobe.load_model(f"py:{FAMILY}:one_sequential_resnet",
                                 input=vitprobe.InputOverrides(input_size=(32, 32)))
    seen = {}
    handle = model.blocks[3].register_forward_hook(lambda m, i, o: seen.update(out=o.shape))
    with torch.no_grad():
        model(torch.zeros(1, 3, 32, 32))
    handle.remove()
    stage = next(s for s in loaded.stages() if s.name == "blocks.3")
    assert tuple(seen["out"][1:]) == (stage.channels, *stage.grid)


def test_errors_name_the_layer_and_sharpness_prints_its_images(tmp_path, capsys) -> None:
    """A layer whose output is no map is named in frequency's and receptive-field's refusal; the
    sharpness table says on how many images it was measured."""
    common = ["--model", f"py:{FAMILY}:mnist_mlp", "--in-chans", "1", "--input-size", "28",
              "--num-images", "4", "--quiet"]
    for command in ("frequency", "receptive-field"):
        assert main([command, *common, "--layer", "layers.1", "--out", str(tmp_path / command)]) == 2
        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert "layer 'layers.1' of mnist_mlp outputs shape (4, 32)" in error, error
    assert main(["sharpness", "--model", "demo:vit", "--num-images", "8", "--no-sam", "--max-iter", "4",
                 "--out", str(tmp_path / "s"), "--quiet"]) == 0
    header = capsys.readouterr().out.splitlines()[0].split()
    assert "images" in header and "data" in header


def test_similarity_reads_every_stage_inside_one_container(tmp_path) -> None:
    """CKA on the one-container ResNet is 3 x 3 (a stage per resolution), not CKA(output, output)."""
    from vitprobe import layer_similarity

    model = vitprobe.load_model(f"py:{FAMILY}:one_sequential_resnet",
                                input=vitprobe.InputOverrides(input_size=(32, 32)))
    result = layer_similarity(model, torch.randn(8, 3, 32, 32))
    assert result.layers == ["blocks.1", "blocks.3", "blocks.5"] and result.cka.shape == (3, 3)
