"""Every bad input refused as promised: one line on stderr naming the problem, exit status 2, no
traceback, nothing written outside ``--out``, and no code run from a file (a pickle payload that
would create a marker file). Each case is a real command on a tiny timm model and real files,
built once for the session."""

from __future__ import annotations

import json
import os
import pickle
import re
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

from vitprobe import errors as vitprobe_errors
from vitprobe.cli import main

MODELS = '''
from timm.models.vision_transformer import VisionTransformer
from timm.models.resnet import BasicBlock, ResNet


def vit(**kwargs):
    return VisionTransformer(img_size=16, patch_size=4, embed_dim=8, depth=1, num_heads=2, num_classes=4)


def resnet():
    return ResNet(BasicBlock, [1, 1, 1, 1], channels=(4, 4, 4, 4), stem_width=4, num_classes=4)


def raises():
    raise RuntimeError("the builder is broken")


def needs(width):
    return vit()


def not_a_module():
    return 42


NOT_CALLABLE = 3
'''


class Payload:
    """Unpickling it opens (creates) ``marker``: code run from a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


@pytest.fixture(scope="session")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad_inputs")
    f: dict[str, Path] = {"root": root, "marker": root / "PAYLOAD_RAN"}
    (root / "bad_models.py").write_text(MODELS)
    f["models"] = root / "bad_models.py"
    torch.manual_seed(0)
    vit = timm.create_model("test_vit", num_classes=4)
    state = vit.state_dict()
    save_file(state, str(root / "vit.safetensors"))
    f["vit"] = root / "vit.safetensors"
    two = timm.create_model("test_vit", num_classes=2)
    save_file(two.state_dict(), str(root / "two.safetensors"))
    f["two_classes"] = root / "two.safetensors"
    nan = {k: v.clone() for k, v in state.items()}
    nan["head.weight"][0, 0] = float("nan")
    save_file(nan, str(root / "nan.safetensors"))
    f["nan"] = root / "nan.safetensors"
    resnet = timm.create_model("test_resnet", num_classes=4)
    save_file(resnet.state_dict(), str(root / "resnet.safetensors"))
    f["resnet"] = root / "resnet.safetensors"
    # damaged and foreign checkpoint files
    torch.save(state, root / "good.pth")
    raw = (root / "good.pth").read_bytes()
    (root / "truncated.pth").write_bytes(raw[: len(raw) // 2])
    sraw = f["vit"].read_bytes()
    (root / "truncated.safetensors").write_bytes(sraw[: len(sraw) // 2])
    (root / "text.pth").write_text("this is a text file, not a checkpoint\n")
    (root / "random.bin").write_bytes(np.random.default_rng(0).bytes(4096))
    (root / "empty.pth").write_bytes(b"")
    torch.save({"epoch": 3, "optimizer": {"lr": 0.1}}, root / "nostate.pth")
    save_file({k: v for k, v in state.items() if k != "head.bias"} | {"extra.weight": torch.zeros(2)},
              str(root / "keys.safetensors"))
    save_file({**state, "head.weight": torch.zeros(4, 7)}, str(root / "shape.safetensors"))
    for name in ("truncated.pth", "truncated.safetensors", "text.pth", "random.bin", "empty.pth",
                 "nostate.pth", "keys.safetensors", "shape.safetensors"):
        f[name] = root / name
    # pickle payloads: every extension, the zip format, the legacy format and a raw pickle
    payload = {"state_dict": state, "evil": Payload(f["marker"])}
    for ext in ("pth", "pt", "bin", "ckpt"):
        torch.save(payload, root / f"payload.{ext}")
        f[f"payload.{ext}"] = root / f"payload.{ext}"
    torch.save(payload, root / "legacy.pth", _use_new_zipfile_serialization=False)
    f["legacy.pth"] = root / "legacy.pth"
    with open(root / "raw.pkl.pth", "wb") as handle:
        pickle.dump(payload, handle)
    f["raw.pth"] = root / "raw.pkl.pth"
    # hub folders (timm layout)
    good_config = {"architecture": "test_vit", "num_classes": 4}
    hub = {
        "hub_no_config": None, "hub_bad_json": "{not json", "hub_json_string": json.dumps("test_vit"),
        "hub_json_list": json.dumps(["test_vit"]), "hub_arch_list": json.dumps({"architecture": ["test_vit"]}),
        "hub_arch_unknown": json.dumps({"architecture": "test_vitt"}),
        "hub_classes_text": json.dumps({**good_config, "num_classes": "four"}),
        "hub_model_args": json.dumps({**good_config, "model_args": {"no_such_argument": 1}}),
        "hub_model_args_list": json.dumps({**good_config, "model_args": [1, 2]}),
        "hub_no_weights": json.dumps(good_config), "hub_mismatch": json.dumps({**good_config, "num_classes": 7}),
        "hub_payload": json.dumps(good_config), "hub_symlink": json.dumps(good_config),
        "hub_neither": json.dumps({"name": "x"}),
    }
    for name, text in hub.items():
        folder = root / name
        folder.mkdir()
        if text is not None:
            (folder / "config.json").write_text(text)
        if name in ("hub_mismatch", "hub_arch_list", "hub_classes_text", "hub_model_args"):
            save_file(state, str(folder / "model.safetensors"))
        f[name] = folder
    torch.save(payload, f["hub_payload"] / "pytorch_model.bin")
    os.symlink(f["payload.pth"], f["hub_symlink"] / "pytorch_model.bin")
    # transformers folders
    import transformers

    config = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=1,
                                    num_attention_heads=2, intermediate_size=32, num_labels=4)
    model = transformers.ViTForImageClassification(config)
    for name in ("hf_preprocessor", "hf_sizes", "hf_no_weights", "hf_truncated", "hf_label_key",
                 "hf_payload", "hf_model_type"):
        folder = root / name
        model.save_pretrained(folder)
        f[name] = folder
    (f["hf_preprocessor"] / "preprocessor_config.json").write_text('{"image_mean": [0.5,')
    sizes = json.loads((f["hf_sizes"] / "config.json").read_text())
    (f["hf_sizes"] / "config.json").write_text(json.dumps({**sizes, "hidden_size": 32}))
    (f["hf_no_weights"] / "model.safetensors").unlink()
    weights = (f["hf_truncated"] / "model.safetensors").read_bytes()
    (f["hf_truncated"] / "model.safetensors").write_bytes(weights[: len(weights) // 3])
    labels = json.loads((f["hf_label_key"] / "config.json").read_text())
    (f["hf_label_key"] / "config.json").write_text(json.dumps({**labels, "id2label": {"zero": "a"}}))
    (f["hf_payload"] / "model.safetensors").unlink()
    torch.save({"evil": Payload(f["marker"])}, f["hf_payload"] / "pytorch_model.bin")
    other = json.loads((f["hf_model_type"] / "config.json").read_text())
    (f["hf_model_type"] / "config.json").write_text(json.dumps({**other, "model_type": "swin"}))
    # images and data folders
    f["empty_dir"] = root / "empty_dir"
    f["empty_dir"].mkdir()
    for name, content in (("corrupt", b"\x89PNG\r\n\x1a\nbroken"), ("zero", b""), ("text", b"hello")):
        folder = root / f"images_{name}"
        folder.mkdir()
        (folder / "a.png").write_bytes(content)
        f[f"images_{name}"] = folder
    f["bomb"] = root / "bomb.png"
    f["bomb"].write_bytes(png_claiming(20000, 20000))
    f["no_images"] = root / "no_images"
    f["no_images"].mkdir()
    (f["no_images"] / "notes.txt").write_text("x")
    for name, count in (("two_folders", 2), ("six_folders", 6)):
        folder = root / name
        for index in range(count):
            (folder / f"class{index}").mkdir(parents=True)
            Image.new("RGB", (20, 20), (40 * index, 9, 9)).save(folder / f"class{index}" / "a.png")
        f[name] = folder
    f["names_three"] = root / "names_three.txt"
    f["names_three"].write_text("a\nb\nc\n")
    # results to report on, recipes
    f["csv_empty"] = root / "csv_empty"
    f["csv_empty"].mkdir()
    (f["csv_empty"] / "evaluate.csv").write_bytes(b"")
    f["csv_binary"] = root / "csv_binary"
    f["csv_binary"].mkdir()
    (f["csv_binary"] / "evaluate.csv").write_bytes(np.random.default_rng(1).bytes(512))
    for name in ("csv_empty", "csv_binary"):  # the run's JSON declares the CSV's columns
        (f[name] / "evaluate.json").write_text('{"columns": {"index": ["metric"], "reported": null}}')
    f["a_file"] = root / "a_file.txt"
    f["a_file"].write_text("x")
    study = '[study]\nmodels = ["demo:vit"]\n{study}\n[evaluate]\n{section}\n'
    recipes = {
        "recipe_gallery": ('[study.gallery]\n"../../escaped.png" = "figures/*.png"', ""),
        "recipe_trust": ("trust_checkpoint = true", ""),
        "recipe_trust_section": ("", "trust_checkpoint = true"),
        "recipe_toml": ("num_images = ", ""),
        "recipe_section": ("", "[sharpnes]"),
        "recipe_key": ("", "no_such_key = 1"),
    }
    for name, (study_extra, section) in recipes.items():
        path = root / f"{name}.toml"
        path.write_text(study.format(study=study_extra, section=section))
        f[name] = path
    f["recipe_models"] = root / "recipe_models.toml"
    f["recipe_models"].write_text("[study]\nmodels = []\n[evaluate]\n")
    return f


Case = Callable[[dict[str, Path]], tuple[list[str], str]]
CASES: dict[str, Case] = {}


def case(name: str, argv: Callable[[dict[str, Path]], list[str]] | list[str], pattern: str) -> None:
    assert name not in CASES, name
    CASES[name] = lambda f: ((argv(f) if callable(argv) else list(argv)), pattern)


def vit(f) -> list[str]:
    return ["--model", f"test_vit={f['vit']}"]


# -- shared options, on every analysis command -------------------------------------------------
SHARED_BAD = {
    "images_zero": (["--num-images", "0"], r"--num-images must be positive, got 0"),
    "images_negative": (["--num-images", "-3"], r"--num-images must be positive, got -3"),
    "images_text": (["--num-images", "abc"], r"argument --num-images: invalid int value: 'abc'"),
    "batch_zero": (["--batch-size", "0"], r"--batch-size must be positive, got 0"),
    "batch_negative": (["--batch-size", "-2"], r"--batch-size must be positive"),
    "size_zero": (["--input-size", "0"], r"--input-size must be positive"),
    "size_negative": (["--input-size", "-64"], r"--input-size must be positive"),
    "size_three": (["--input-size", "32", "32", "3"], r"--input-size takes S or H W, got 3 values"),
    "mean_count": (["--mean", "0.5", "0.5"], r"--mean has 2 values for 3 input channels"),
    "std_zero": (["--std", "0", "1", "1"], r"--std must be positive"),
    "crop_zero": (["--crop-pct", "0"], r"--crop-pct must be in \(0, 1\]"),
    "crop_two": (["--crop-pct", "2"], r"--crop-pct must be in \(0, 1\]"),
    "chans_zero": (["--in-chans", "0"], r"--in-chans must be positive"),
    "device": (["--device", "tpu"], r"argument --device: invalid choice: 'tpu'"),
    "unknown_flag": (["--no-such-flag"], r"unrecognized arguments: --no-such-flag"),
    "format": (["--format", "bmp"], r"argument --format: invalid choice"),
}
ANALYSES = ("sharpness", "attention", "receptive-field", "landscape", "evaluate", "throughput")
for command in ANALYSES:
    for key, (extra, pattern) in SHARED_BAD.items():
        case(f"{command}-{key}", lambda f, c=command, e=extra: [c, *vit(f), *e], pattern)

# -- options of one analysis --------------------------------------------------------------------
COMMAND_BAD = {
    "sharpness": [
        ("tol_nan", ["--tol", "nan"], r"--tol a finite number above 0"),
        ("tol_inf", ["--tol", "inf"], r"--tol a finite number above 0"),
        ("tol_zero", ["--tol", "0"], r"--tol a finite number above 0"),
        ("tol_negative", ["--tol", "-1"], r"--tol a finite number above 0"),
        ("top_k_zero", ["--top-k", "0"], r"--top-k and --max-iter must be positive"),
        ("max_iter_zero", ["--max-iter", "0"], r"--top-k and --max-iter must be positive"),
        ("keskar_nan", ["--keskar", "nan"], r"--keskar must be a finite epsilon above 0, got nan"),
        ("keskar_negative", ["--keskar", "-1"], r"--keskar must be a finite epsilon above 0"),
        ("keskar_inf", ["--keskar", "inf"], r"--keskar must be a finite epsilon above 0"),
        ("density_sigma", ["--density-sigma", "nan"], r"--density-sigma must be a finite number"),
        ("subsets_one", ["--subsets", "1"], r"--subsets needs at least 2 subsets"),
        ("params_regex", ["--params", "["], r"--params"),
        ("params_none", ["--params", "no_such_parameter"], r"no_such_parameter"),
        ("sam_rho_negative", ["--sam-rho", "-1"], r"--sam-rho must be finite and >= 0"),
        ("sam_rho_nan", ["--sam-rho", "nan"], r"--sam-rho must be finite and >= 0"),
        ("sam_steps", ["--sam-steps", "0"], r"--sam-steps must be at least 1"),
        ("sam_m", ["--sam-m", "0"], r"--sam-m must be at least 1"),
        ("trace_samples", ["--trace", "--trace-samples", "2"], r"--trace-samples must be at least 3"),
        ("density_vectors", ["--density", "--density-vectors", "0"], r"--density-vectors must be at least 1"),
        ("method", ["--method", "arnoldi"], r"argument --method: invalid choice"),
    ],
    "landscape": [
        ("grid_huge", ["--grid", "1000000x1000000"], r"1,000,000,000,000 points; at most 1,000,000"),
        ("grid_one", ["--grid", "1"], r"a grid is one or two counts of at least 2 points"),
        ("grid_text", ["--grid", "axb"], r"--grid must look like 51x51 or 101"),
        ("grid_three", ["--grid", "3x3x3"], r"a grid is one or two counts"),
        ("span_text", ["--span", "a:b"], r"span"),
        ("span_order", ["--span", "1:-1"], r"LOW < HIGH"),
        ("shard_text", ["--shard", "x"], r"--shard"),
        ("shard_range", ["--shard", "3/2"], r"--shard"),
        ("interpolate_no_to", ["--directions", "interpolate"], r"needs --directions interpolate|--to"),
        ("to_random", ["--to", "x=y"], r"--to is only for --directions interpolate"),
    ],
    "attention": [
        ("discard_high", ["--discard", "1.5"], r"--discard must be in \[0, 1\)"),
        ("discard_negative", ["--discard", "-0.1"], r"--discard must be in \[0, 1\)"),
        ("layers", ["--layers", "99"], r"layer 99 does not exist"),
        ("heads", ["--heads", "99"], r"head 99 does not exist"),
        ("query", ["--query", "99", "99"], r"outside the"),
        ("source_dist", ["--source", "dist"], r"no dist token"),
        ("images_missing", ["--images", "/no/such/image.png"], r"image file not found"),
        ("start_layer", ["--start-layer", "99"], r"layer 99 does not exist"),
        ("method", ["--method", "lrp"], r"argument --method: invalid choice"),
    ],
    "receptive-field": [
        ("layer", ["--layer", "no.such.layer"], r"has no layer 'no.such.layer'; its blocks: blocks.0"),
        ("exponent", ["--scale", "power", "--exponent", "-1"], r"positive exponent"),
        ("gradient", ["--gradient", "square"], r"argument --gradient: invalid choice"),
    ],
    "throughput": [
        ("fp16_cpu", ["--precision", "fp16"], r"fp16 on CPU is refused"),
        ("steps", ["--steps", "0"], r"throughput needs batch size >= 1, steps >= 1"),
        ("warmup", ["--warmup", "-1"], r"throughput needs batch size >= 1, steps >= 1 and warmup >= 0"),
    ],
    "evaluate": [
        ("confidence", ["--confidence", "1.5"], r"a confidence in \(0, 1\)"),
        ("top_k", ["--top-k", "0"], r"top-k values >= 1"),
        ("bins", ["--ece-bins", "0"], r"ECE bins >= 1"),
        ("bootstrap", ["--bootstrap", "0"], r"bootstrap resamples >= 1"),
    ],
}
for command, entries in COMMAND_BAD.items():
    for key, extra, pattern in entries:
        case(f"{command}-{key}", lambda f, c=command, e=extra: [c, *vit(f), *e], pattern)
case("attention-rollout_on_a_cnn", lambda f: ["attention", "--model", f"test_resnet={f['resnet']}",
                                                  "--method", "rollout"],
     r"--method rollout: .*has no attention layers")
case("attention-layer_on_a_cnn", lambda f: ["attention", "--model", f"test_resnet={f['resnet']}",
                                                "--layer", "nope"], r"has no layer 'nope'; its stages: ")

# -- model specs -----------------------------------------------------------------------------------


def evaluate_with(spec: Callable[[dict[str, Path]], str], *extra: str):
    return lambda f: ["evaluate", "--model", spec(f), *extra]


SPECS = [
    ("unknown_timm", lambda f: "vit_base_patch16_22", r"unknown model 'vit_base_patch16_22'; close matches: vit_base_patch16_224"),
    ("unknown_demo", lambda f: "demo:vitt", r"unknown demo model 'vitt'; choose from demo:vit"),
    ("arch_no_path", lambda f: "test_vit=", r"names no checkpoint file after '='"),
    ("path_no_arch", lambda f: f"={f['vit']}", r"names no architecture before '='"),
    ("bare_file", lambda f: str(f["vit"]), r"is a file: name its architecture too"),
    ("missing_file", lambda f: "test_vit=/no/such/weights.pth", r"checkpoint not found: /no/such/weights.pth"),
    ("text_pth", lambda f: f"test_vit={f['text.pth']}", r"text.pth is not a PyTorch checkpoint"),
    ("random_bin", lambda f: f"test_vit={f['random.bin']}", r"random.bin is not a PyTorch checkpoint"),
    ("empty_pth", lambda f: f"test_vit={f['empty.pth']}", r"empty.pth is not a PyTorch checkpoint"),
    ("truncated_pth", lambda f: f"test_vit={f['truncated.pth']}", r"truncated.pth is not a PyTorch checkpoint"),
    ("truncated_safetensors", lambda f: f"test_vit={f['truncated.safetensors']}", r"cannot read safetensors file"),
    ("no_state_dict", lambda f: f"test_vit={f['nostate.pth']}", r"holds no state dict"),
    ("keys", lambda f: f"test_vit={f['keys.safetensors']}", r"missing keys: head.bias; unexpected keys: extra.weight"),
    ("shapes", lambda f: f"test_vit={f['shape.safetensors']}", r"shape mismatches \(checkpoint vs model\): head.weight \(4, 7\)"),
    ("unknown_arch_file", lambda f: f"test_vitt={f['vit']}", r"unknown model 'test_vitt'"),
    ("torchvision_unknown", lambda f: f"torchvision:resnet181={f['vit']}", r"unknown torchvision model 'resnet181'; close matches: resnet18"),
    ("torchvision_wrong_weights", lambda f: f"torchvision:resnet18={f['vit']}", r"does not match ResNet: missing keys"),
    ("py_module", lambda f: "py:no_such_module:build", r"cannot import build from no_such_module"),
    ("py_function", lambda f: f"py:{f['models']}:nope", r"cannot import nope from"),
    ("py_not_callable", lambda f: f"py:{f['models']}:NOT_CALLABLE", r"NOT_CALLABLE is a int, not callable"),
    ("py_raises", lambda f: f"py:{f['models']}:raises", r"raises\(\) raised RuntimeError: the builder is broken"),
    ("py_needs_argument", lambda f: f"py:{f['models']}:needs", r"needs\(\) raised TypeError: .*missing 1 required positional argument: 'width'"),
    ("py_not_module", lambda f: f"py:{f['models']}:not_a_module", r"returned int, not a torch.nn.Module"),
    ("py_file_missing", lambda f: "py:/no/such/models.py:build", r"no such file /no/such/models.py"),
    ("py_no_function", lambda f: "py:models", r"expected py:MODULE:FUNCTION"),
    ("py_weights_mismatch", lambda f: f"py:{f['models']}:resnet={f['vit']}", r"does not match ResNet: missing keys"),
    ("hub_no_config", lambda f: str(f["hub_no_config"]), r"has no config.json"),
    ("hub_bad_json", lambda f: str(f["hub_bad_json"]), r"cannot parse .*config.json"),
    ("hub_json_string", lambda f: str(f["hub_json_string"]), r"holds a JSON str, not an object of settings"),
    ("hub_json_list", lambda f: str(f["hub_json_list"]), r"holds a JSON list, not an object of settings"),
    ("hub_arch_list", lambda f: str(f["hub_arch_list"]), r"architecture must be a timm model name, got \['test_vit'\]"),
    ("hub_arch_unknown", lambda f: str(f["hub_arch_unknown"]), r"unknown model 'test_vitt'"),
    ("hub_classes_text", lambda f: str(f["hub_classes_text"]), r"num_classes must be an integer, got 'four'"),
    ("hub_model_args", lambda f: str(f["hub_model_args"]), r"test_vit rejects its settings \(TypeError"),
    ("hub_model_args_list", lambda f: str(f["hub_model_args_list"]), r"model_args must be an object"),
    ("hub_no_weights", lambda f: str(f["hub_no_weights"]), r"no weights in .*: expected one of model.safetensors"),
    ("hub_mismatch", lambda f: str(f["hub_mismatch"]), r"shape mismatches"),
    ("hub_payload", lambda f: str(f["hub_payload"]), r"holds pickled objects beyond tensors \(.*GLOBAL"),
    ("hub_symlink", lambda f: str(f["hub_symlink"]), r"holds pickled objects beyond tensors"),
    ("hub_neither", lambda f: str(f["hub_neither"]), r"names neither a timm 'architecture' nor a transformers 'model_type'"),
    ("hf_preprocessor", lambda f: str(f["hf_preprocessor"]), r"cannot read .*preprocessor_config.json"),
    ("hf_sizes", lambda f: str(f["hf_sizes"]), r"cannot load the transformers model in .*hf_sizes"),
    ("hf_no_weights", lambda f: str(f["hf_no_weights"]), r"no weights in .*hf_no_weights"),
    ("hf_truncated", lambda f: str(f["hf_truncated"]), r"cannot load the transformers model in .*hf_truncated"),
    ("hf_label_key", lambda f: str(f["hf_label_key"]), r"cannot load the transformers model in .*hf_label_key"),
    ("hf_payload", lambda f: str(f["hf_payload"]), r"holds pickled objects beyond tensors"),
    ("hf_model_type", lambda f: str(f["hf_model_type"]), r"model_type 'swin' is not supported"),
]
for key, spec, pattern in SPECS:
    case(f"spec-{key}", evaluate_with(spec), pattern)
for key in ("payload.pth", "payload.pt", "payload.bin", "payload.ckpt", "legacy.pth", "raw.pth"):
    case(f"spec-arch-{key}", evaluate_with(lambda f, k=key: f"test_vit={f[k]}"),
         r"(holds pickled objects beyond tensors|is not a PyTorch checkpoint)")
    case(f"spec-py-{key}", evaluate_with(lambda f, k=key: f"py:{f['models']}:vit={f[k]}"),
         r"(holds pickled objects beyond tensors|is not a PyTorch checkpoint)")
    case(f"spec-torchvision-{key}", evaluate_with(lambda f, k=key: f"torchvision:resnet18={f[k]}"),
         r"(holds pickled objects beyond tensors|is not a PyTorch checkpoint)")
case("spec-model_args_first", ["evaluate", "--model-args", "x=1"], r"--model-args must follow the --model")
case("spec-model_args_form", lambda f: [*["evaluate"], *vit(f), "--model-args", "x"], r"--model-args takes KEY=VALUE")
case("spec-model_args_unknown", lambda f: ["evaluate", *vit(f), "--model-args", "no_such=1"], r"test_vit: bad --model-args")
case("spec-torchvision_args", lambda f: ["evaluate", "--model", f"torchvision:resnet18={f['vit']}",
                                          "--model-args", "no_such=1"], r"torchvision:resnet18: bad --model-args")

# -- data ---------------------------------------------------------------------------------------
DATA = [
    ("missing", lambda f: "/no/such/folder", r"data not found: '/no/such/folder'"),
    ("empty_folder", lambda f: str(f["empty_dir"]), r"no images in folder"),
    ("no_images", lambda f: str(f["no_images"]), r"no images in folder"),
    ("corrupt", lambda f: str(f["images_corrupt"]), r"cannot read image .*a.png"),
    ("zero_bytes", lambda f: str(f["images_zero"]), r"cannot read image .*a.png"),
    ("text_png", lambda f: str(f["images_text"]), r"cannot read image .*a.png"),
    ("bomb", lambda f: str(f["bomb"]), r"refusing image .*bomb.png: .*decompression bomb"),
    ("glob", lambda f: str(f["root"] / "*.jpeg"), r"no image files match"),
    ("two_folders", lambda f: str(f["two_folders"]), r"the data has 2 class folders but .* has 4 classes"),
    ("six_folders", lambda f: str(f["six_folders"]), r"the data has 6 class folders but .* has 4 classes"),
    ("shapes_split", lambda f: "shapes:valid", r"unknown shapes split 'valid'"),
]
for key, data, pattern in DATA:
    case(f"data-{key}", lambda f, d=data: ["evaluate", *vit(f), "--data", d(f)], pattern)
case("data-shapes_too_many", lambda f: ["evaluate", *vit(f), "--num-images", "200000"],
     r"--num-images 200000 is more than the 100000 images of each shapes split")
case("data-class_names_missing", lambda f: ["evaluate", *vit(f), "--data", str(f["two_folders"]),
                                            "--class-names", "/no/such/names.txt"], r"cannot read --class-names")
case("data-class_names_count", lambda f: ["evaluate", *vit(f), "--data", str(f["two_folders"]),
                                          "--class-names", str(f["names_three"])],
     r"has 3 names, but .* has 4 classes")
for command in ("sharpness", "landscape", "evaluate"):  # a 2-class checkpoint on 4-class shapes
    case(f"{command}-two_class_model", lambda f, c=command: [c, "--model", f"test_vit={f['two_classes']}"],
         r"the labels range over \[\d, 3\] but the model has 2 classes")
    case(f"{command}-nan_weights", lambda f, c=command: [c, "--model", f"test_vit={f['nan']}"],
         r"is not finite")

# -- output folders, reports, recipes ---------------------------------------------------------
case("out-is_a_file", lambda f: ["evaluate", *vit(f), "--out", str(f["a_file"])], r"--out .*a_file.txt is a file, not a folder")
case("out-under_a_file", lambda f: ["evaluate", *vit(f), "--out", str(f["a_file"] / "sub")], r"cannot create --out")
case("out-proc", lambda f: ["evaluate", *vit(f), "--out", "/proc/vitprobe-out"], r"cannot create --out /proc/vitprobe-out")
case("out-bad_and_data_bad", lambda f: ["evaluate", *vit(f), "--data", "NOPE", "--out", str(f["a_file"])],
     r"is a file, not a folder")
case("report-empty_csv", lambda f: ["report", str(f["csv_empty"])], r"cannot read .*evaluate.csv: EmptyDataError")
case("report-binary_csv", lambda f: ["report", str(f["csv_binary"])], r"cannot read .*evaluate.csv")
case("report-not_a_folder", lambda f: ["report", str(f["a_file"])], r"is not a folder of vitprobe results")
case("report-out_folder", lambda f: ["report", str(f["csv_empty"]), "--out", str(f["root"])],
     r"(is a folder: report writes one file|cannot read)")
RECIPES = [
    ("recipe_gallery", r"\[study.gallery\] '\.\./\.\./escaped.png' must be a file name inside the out folder"),
    ("recipe_trust", r"\[study\] sets trust_checkpoint: a recipe cannot allow unpickling code"),
    ("recipe_trust_section", r"\[evaluate\] sets trust_checkpoint"),
    ("recipe_toml", r"not valid TOML"),
    ("recipe_section", r"\[sharpnes\] is not an analysis \(did you mean 'sharpness'\?\)"),
    ("recipe_key", r"\[evaluate\] has no setting 'no_such_key'"),
    ("recipe_models", r"\[study\] models must be a non-empty list of model specs"),
]
for key, pattern in RECIPES:
    case(f"recipe-{key}", lambda f, k=key: ["run", str(f[k])], pattern)
case("recipe-missing", ["run", "/no/such/recipe.toml"], r"/no/such/recipe.toml")


def _files_outside(root: Path, out: Path) -> set[str]:
    return {str(p) for p in root.rglob("*") if out not in p.parents and p != out}


def test_the_matrix_has_every_case() -> None:
    assert len(CASES) >= 160


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_one_line_and_exit_2(name, files, tmp_path, capsys) -> None:
    argv, pattern = CASES[name](files)
    if "--out" not in argv:
        argv = [*argv, "--out", str(tmp_path / "out")]
    if argv[0] not in ("run", "report"):
        argv += ["--quiet", *(["--num-images", "4"] if "--num-images" not in argv else [])]
    before = _files_outside(files["root"], tmp_path / "out")
    code = main(argv)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert "Traceback" not in captured.err, captured.err
    assert code == 2, (code, captured.err)
    assert len(lines) == 1, captured.err
    assert re.search(pattern, lines[0]), lines[0]
    assert not files["marker"].exists(), "a pickle payload ran"
    assert _files_outside(files["root"], tmp_path / "out") == before
    assert {p.name for p in tmp_path.iterdir()} <= {"out"}


def test_damaged_cached_weights_are_named_as_damaged(tmp_path) -> None:
    """A truncated model.safetensors in the Hugging Face cache is not "missing": the file is named
    and called damaged (a real cache layout: refs/main and a snapshot)."""
    import subprocess
    import sys

    repo = tmp_path / "hub" / "models--timm--test_vit.r160_in1k"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    save_file(timm.create_model("test_vit").state_dict(), str(tmp_path / "whole.safetensors"))
    whole = (tmp_path / "whole.safetensors").read_bytes()
    (snapshot / "model.safetensors").write_bytes(whole[: len(whole) // 2])
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-m", "vitprobe", "throughput", "--model", "test_vit.r160_in1k",
                          "--out", str(tmp_path / "out"), "--quiet"], capture_output=True, text=True,
                         env=env, timeout=300)
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 2 and len(lines) == 1, run.stderr
    assert "cached weights of test_vit.r160_in1k are damaged" in lines[0] and "model.safetensors" in lines[0]


# -- several models failing: one line each, status in the JSON, no traceback --------------------
QUICK = {
    "sharpness": ["--no-sam", "--max-iter", "3"], "attention": ["--method", "rollout"],
    "map-quality": ["--method", "rollout", "--steps", "2"], "receptive-field": [],
    "landscape": ["--grid", "3"], "similarity": [], "frequency": [], "evaluate": [],
    "corruptions": ["--corruption", "contrast", "--severity", "1"],
    "throughput": ["--steps", "1", "--warmup", "0"],
}


@pytest.mark.parametrize("failing", ["the only model", "both models", "one of two"])
@pytest.mark.parametrize("command", sorted(QUICK))
def test_failing_models_are_one_line_each(command, failing, files, tmp_path, capsys) -> None:
    """Every analysis command: each failed model on its own line, exit status 2, no traceback,
    and a JSON whose status is ``failed`` (nothing done) or ``partial`` (the other model done)."""
    mismatched, unknown = f"test_vit={files['keys.safetensors']}", f"test_vitt={files['vit']}"
    good = f"test_vit={files['vit']}"
    specs = {"the only model": [mismatched], "both models": [mismatched, unknown],
             "one of two": [unknown, good]}[failing]
    out = tmp_path / "out"
    argv = [command, *[a for spec in specs for a in ("--model", spec)], *QUICK[command],
            "--num-images", "4", "--batch-size", "4", "--quiet", "--out", str(out)]
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if not line.startswith("vitprobe: warning:")]
    assert "Traceback" not in err, err
    assert code == 2, (code, err)
    record = json.loads((out / f"{command}.json").read_text())
    bad = [spec for spec in specs if spec != good]
    assert [f["model"] for f in record["failed_models"]] == bad
    if failing == "the only model":
        assert lines == [f"vitprobe {command}: error: {record['failed_models'][0]['error']}"]
        assert record["status"] == "failed"
    else:
        assert len(lines) == len(bad) + 1, err
        for spec, line in zip(bad, lines):
            assert line.startswith(f"vitprobe {command}: error: {spec}: "), line
        assert lines[-1] == f"vitprobe {command}: {len(bad)} of 2 models failed (see above)"
        assert record["status"] == ("partial" if failing == "one of two" else "failed")
        assert len(record["models_done"]) == (1 if failing == "one of two" else 0)


def test_class_folders_follow_torchvision_rule(files, tmp_path) -> None:
    """Every class folder counts, an empty one too (torchvision's ImageFolder): 3 folders with
    images and 1 empty one are the 4 classes of the model, by sorted position, as ImageFolder
    gives them; with the empty folder dropped (as git drops it) the refusal names the rule and
    the way to match by name, and ``--class-names`` then maps the folders by name."""
    import torchvision

    from vitprobe import load_data, load_model

    root = tmp_path / "subset"
    for index, name in enumerate(("cat", "dog", "emu", "fox")):
        (root / name).mkdir(parents=True)
        if name != "dog":
            Image.new("RGB", (20, 20), (60 * index, 9, 9)).save(root / name / "a.png")
    model = load_model(f"test_vit={files['vit']}")
    data = load_data(str(root), model, num_images=3, batch_size=3)
    reference = torchvision.datasets.ImageFolder(root, allow_empty=True)
    assert sorted(data[0][1].tolist()) == sorted(reference.targets) == [0, 2, 3]
    (root / "dog").rmdir()
    with pytest.raises(vitprobe_errors.UserError) as refusal:
        load_data(str(root), model, num_images=3)
    message = str(refusal.value)
    assert "3 class folders but" in message and "has 4 classes" in message
    assert "ImageFolder rule" in message and "empty ones keep the positions" in message and "--class-names" in message
    names = tmp_path / "names.txt"
    names.write_text("cat\ndog\nemu\nfox\n")
    data = load_data(str(root), model, num_images=3, batch_size=3, class_names=str(names))
    assert sorted(data[0][1].tolist()) == [0, 2, 3]
