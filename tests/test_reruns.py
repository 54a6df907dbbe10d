"""Reruns, interruptions and two runs in one folder, with real ``vitprobe`` processes: no
finished row is lost, the JSON always describes the CSV beside it, exit codes are honest."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import run_models

MODELS = [f"py:{run_models.__file__}:{name}" for name in "abc"]
EVALUATE = ["evaluate", *[token for spec in MODELS for token in ("--model", spec)],
            "--input-size", "16", "--num-images", "8", "--bootstrap", "20", "--quiet"]


def _start(argv: list[str], slow: str = "") -> subprocess.Popen:
    """A real ``vitprobe`` process that takes Ctrl-C as a terminal's would. A test run started in
    the background by a non-interactive shell (``pytest &``, ``nohup``) ignores SIGINT, and a
    child inherits that: Python then installs no handler and the interruption tests would wait
    out their timeouts (seen in two full-suite runs started so; /proc's SigIgn showed it)."""
    env = {**os.environ, "VITPROBE_TEST_SLOW": slow, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "vitprobe", *argv], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _record(out: Path, command: str = "evaluate") -> dict:
    try:
        return json.loads((out / f"{command}.json").read_text())
    except (OSError, ValueError):
        return {}


def _wait_for(condition, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def _models(out: Path, command: str = "evaluate") -> set[str]:
    return set(pd.read_csv(out / f"{command}.csv")["model"])


def _describes_csv(out: Path, command: str = "evaluate") -> None:
    digest = hashlib.sha256((out / f"{command}.csv").read_bytes()).hexdigest()
    assert _record(out, command)["csv_sha256"] == digest


def _complete(out: Path) -> None:
    done = _start([*EVALUATE, "--out", str(out)])
    assert done.wait(timeout=120) == 0, done.stderr.read()
    assert _record(out)["status"] == "complete" and _models(out) == {"a", "b", "c"}


def _stop_after_first_model(argv: list[str], out: Path, how: signal.Signals) -> subprocess.Popen:
    run = _start(argv, slow="b,c")
    _wait_for(lambda: _record(out).get("models_done") == ["a"] or run.poll() is not None)
    assert run.poll() is None, run.stderr.read()
    run.send_signal(how)
    run.wait(timeout=60)
    return run


def test_a_killed_rerun_keeps_the_previous_rows_and_says_so(tmp_path) -> None:
    out = tmp_path / "out"
    _complete(out)
    before = pd.read_csv(out / "evaluate.csv")
    _stop_after_first_model([*EVALUATE, "--out", str(out)], out, signal.SIGKILL)
    record = _record(out)
    assert record["status"] == "running" and record["models_done"] == ["a"]
    assert record["kept_from_previous"]["models"] == ["b", "c"]
    assert record["kept_from_previous"]["status"] == "complete"
    _describes_csv(out)
    after = pd.read_csv(out / "evaluate.csv")
    assert _models(out) == {"a", "b", "c"} and len(after) == len(before)
    kept = after[after.model != "a"].reset_index(drop=True)
    pd.testing.assert_frame_equal(kept, before[before.model != "a"].reset_index(drop=True))


def test_sigint_mid_run_exits_130_and_keeps_finished_rows(tmp_path) -> None:
    for attempt in range(3):
        out = tmp_path / f"out{attempt}"
        run = _stop_after_first_model([*EVALUATE, "--out", str(out)], out, signal.SIGINT)
        assert run.returncode == 130, run.stderr.read()
        record = _record(out)
        assert record["status"] == "interrupted" and record["models_done"] == ["a"]
        assert _models(out) == {"a"} and record["kept_from_previous"] is None
        _describes_csv(out)
        assert not (out / ".evaluate.lock").exists()


def test_two_runs_into_one_folder_the_second_is_refused(tmp_path) -> None:
    out = tmp_path / "out"
    first = _start([*EVALUATE, "--out", str(out)], slow="b,c")
    _wait_for(lambda: _record(out).get("status") == "running")
    second = _start(["evaluate", "--model", MODELS[0], "--input-size", "16", "--num-images", "8",
                     "--out", str(out), "--quiet"])
    assert second.wait(timeout=120) == 2
    err = second.stderr.read().strip().splitlines()
    assert len(err) == 1 and f"in use by another vitprobe evaluate run (pid {first.pid})" in err[0]
    first.kill()
    first.wait()
    third = _start(["evaluate", "--model", MODELS[0], "--input-size", "16", "--num-images", "8",
                    "--out", str(out), "--quiet"])
    assert third.wait(timeout=120) == 0, third.stderr.read()  # the dead run's lock is taken over
    assert _record(out)["status"] == "complete" and _models(out) == {"a"}


RECIPE = """\
[study]
models = {models}
num_images = 8

[evaluate]
bootstrap = 20
input_size = [16]
"""


def test_a_recipe_reruns_an_analysis_whose_rerun_was_killed(tmp_path) -> None:
    recipe = tmp_path / "study.toml"
    recipe.write_text(RECIPE.format(models=json.dumps(MODELS)))
    out = tmp_path / "out"
    first = _start(["run", str(recipe), "--out", str(out), "--quiet"])
    assert first.wait(timeout=120) == 0, first.stderr.read()
    assert _record(out)["status"] == "complete"
    _stop_after_first_model(["run", str(recipe), "--out", str(out), "--force", "--quiet"], out,
                            signal.SIGKILL)
    assert _record(out)["status"] == "running"
    again = _start(["run", str(recipe), "--out", str(out)])
    stdout, stderr = again.communicate(timeout=120)
    assert again.returncode == 0, stderr
    assert "complete in" not in stderr  # evaluate was not skipped
    record = _record(out)
    assert record["status"] == "complete" and record["models_done"] == ["a", "b", "c"]
    assert record["kept_from_previous"] is None and _models(out) == {"a", "b", "c"}
    _describes_csv(out)


def test_a_bad_out_is_refused_before_any_work(tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    run = _start([*EVALUATE[:3], "--data", "nope", "--out", str(blocker)])
    assert run.wait(timeout=120) == 2
    err = run.stderr.read().strip().splitlines()
    assert len(err) == 1 and "is a file, not a folder" in err[0]


def test_a_complete_rerun_holds_only_its_own_rows(tmp_path) -> None:
    out = tmp_path / "out"
    _complete(out)
    only_a = _start(["evaluate", "--model", MODELS[0], "--input-size", "16", "--num-images", "8",
                     "--out", str(out), "--quiet"])
    assert only_a.wait(timeout=120) == 0
    assert _record(out)["status"] == "complete" and _models(out) == {"a"}
    _describes_csv(out)


def test_sigint_in_a_sharpness_run_exits_130_every_time(tmp_path) -> None:
    """The interrupted model's kept gradient graph is being built when SIGINT arrives (its memory
    measured under saved-tensor hooks): 20 runs, 4 at a time, each must end with 130, not a crash."""
    argv = ["sharpness", *[token for spec in MODELS for token in ("--model", spec)], "--input-size", "16",
            "--num-images", "8", "--no-sam", "--quiet"]
    codes = []
    for wave in range(5):
        outs = [tmp_path / f"run{wave}-{i}" for i in range(4)]
        runs = [_start([*argv, "--out", str(out)], slow="b,c") for out in outs]
        for run, out in zip(runs, outs):
            _wait_for(lambda: _record(out, "sharpness").get("models_done") == ["a"] or run.poll() is not None)
            run.send_signal(signal.SIGINT)
        for run, out in zip(runs, outs):
            codes.append(run.wait(timeout=60))
            assert _record(out, "sharpness")["status"] == "interrupted", run.stderr.read()
            assert set(pd.read_csv(out / "sharpness.csv")["model"]) == {"a"}
    assert codes == [130] * 20
