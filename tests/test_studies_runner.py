"""`vitprobe run`: analyses run in-process into one folder; finished ones are skipped."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from vitprobe.cli import main

MODELS = '''
from timm.models.resnet import BasicBlock, ResNet
from timm.models.vision_transformer import VisionTransformer


def vit():
    return VisionTransformer(img_size=16, patch_size=4, embed_dim=8, depth=1, num_heads=2,
                             mlp_ratio=2.0, num_classes=4)


def resnet():
    return ResNet(BasicBlock, [1, 1, 1, 1], channels=(4, 4, 4, 4), stem_width=4, num_classes=4)
'''

RECIPE = """\
[study]
models = ["py:study_models:vit", "py:study_models:resnet"]
num_images = 24
batch_size = 8

[study.gallery]
"calibration.png" = "figures/reliability.png"
"absent.png" = "figures/nothing-*.png"

[evaluate]
bootstrap = 50

[throughput]
models = ["py:study_models:vit"]
warmup = 1
steps = 2
"""


@pytest.fixture
def study(tmp_path: Path, monkeypatch) -> Path:
    (tmp_path / "study_models.py").write_text(MODELS)
    monkeypatch.syspath_prepend(str(tmp_path))
    path = tmp_path / "tiny.toml"
    path.write_text(RECIPE)
    return path


def _run(recipe: Path, out: Path, *extra: str) -> int:
    return main(["run", str(recipe), "--out", str(out), "--quiet", *extra])


def _statuses(stdout: str) -> dict[str, str]:
    """The status column of the summary table that `run` prints last."""
    found = re.findall(r"^\s*([\w-]+)\s+(ran|skipped|failed|unavailable)\s", stdout, re.M)
    return dict(found)


def _stamps(out: Path) -> dict[str, float]:
    return {p.name: p.stat().st_mtime_ns for p in out.glob("*.csv")}


def test_second_run_skips_and_a_changed_setting_reruns(study: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    assert _run(study, out) == 0
    for name in ("evaluate", "throughput"):
        meta = json.loads((out / f"{name}.json").read_text())
        assert meta["status"] == "complete"
        assert meta["argv"][:2] == ["vitprobe", name]
    assert set(__import__("pandas").read_csv(out / "evaluate.csv")["model"]) == {"vit", "resnet"}
    assert (out / "calibration.png").is_file() and not (out / "absent.png").exists()
    assert _statuses(capsys.readouterr().out) == {"evaluate": "ran", "throughput": "ran"}

    stamps = _stamps(out)
    assert _run(study, out) == 0
    assert _statuses(capsys.readouterr().out) == {"evaluate": "skipped", "throughput": "skipped"}
    assert _stamps(out) == stamps

    study.write_text(RECIPE.replace("steps = 2", "steps = 3"))
    assert _run(study, out) == 0
    assert _statuses(capsys.readouterr().out) == {"evaluate": "skipped", "throughput": "ran"}
    after = _stamps(out)
    assert after["evaluate.csv"] == stamps["evaluate.csv"]
    assert after["throughput.csv"] != stamps["throughput.csv"]
    argv = json.loads((out / "throughput.json").read_text())["argv"]
    assert argv[argv.index("--steps") + 1] == "3"


def test_incomplete_sidecar_reruns_and_force_reruns(study: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    assert _run(study, out, "--only", "throughput") == 0
    assert not (out / "evaluate.csv").exists()
    sidecar = out / "throughput.json"
    meta = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**meta, "status": "interrupted"}))
    capsys.readouterr()
    assert _run(study, out, "--only", "throughput") == 0
    assert _statuses(capsys.readouterr().out) == {"throughput": "ran"}
    assert _run(study, out, "--only", "throughput") == 0
    assert _statuses(capsys.readouterr().out) == {"throughput": "skipped"}
    assert _run(study, out, "--only", "throughput", "--force") == 0
    assert _statuses(capsys.readouterr().out) == {"throughput": "ran"}


def test_run_options_override_the_recipe(study: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert _run(study, out, "--only", "evaluate", "--model", "py:study_models:resnet",
                "--num-images", "8") == 0
    meta = json.loads((out / "evaluate.json").read_text())
    assert [m["label"] for m in meta["models"]] == ["resnet"]
    assert meta["data"]["resnet"]["images"] == 8


def test_a_failing_analysis_fails_the_study(study: Path, tmp_path: Path, capsys) -> None:
    study.write_text(RECIPE + 'precision = "fp16"\n')  # fp16 on CPU is refused
    code = _run(study, tmp_path / "out")
    captured = capsys.readouterr()
    assert code == 2
    assert "fp16 on CPU" in captured.err
    assert "1 of 2 analyses failed (throughput: exit 2)" in captured.err
    assert (tmp_path / "out" / "evaluate.csv").is_file()


def test_sharpness_and_landscapes_take_the_training_split(tmp_path, study, monkeypatch) -> None:
    """Keskar et al., Li et al., Foret et al. and Chen et al. measure on training data: the
    commands default to shapes:train, recipes hand their training data to those analyses."""
    from vitprobe.studies.recipe import parse_recipe
    from vitprobe.studies.runner import analysis_settings

    assert main(["sharpness", "--model", "py:study_models:resnet", "--num-images", "8", "--top-k", "1",
                 "--no-sam", "--out", str(tmp_path / "s"), "--quiet"]) == 0
    record = json.loads((tmp_path / "s" / "sharpness.json").read_text())
    (data,) = record["data"].values()
    assert (data["spec"], data["split"]) == ("shapes:train", "train")
    text = study.read_text() + "\n[sharpness]\ntop_k = 1\n"
    study.write_text(text)
    recipe = parse_recipe(study)
    by_command = {a.command: analysis_settings(recipe, a)["data"] for a in recipe.analyses}
    assert by_command == {"evaluate": "shapes", "throughput": "shapes", "sharpness": "shapes:train"}
    study.write_text(text.replace("[study]\n", '[study]\ntrain_data_env = "VITPROBE_TEST_TRAIN"\n'))
    monkeypatch.delenv("VITPROBE_TEST_TRAIN", raising=False)
    assert _run(study, tmp_path / "out") == 2
    monkeypatch.setenv("VITPROBE_TEST_TRAIN", "shapes:train")
    recipe = parse_recipe(study)
    assert analysis_settings(recipe, recipe.analyses[-1])["data"] == "shapes:train"
