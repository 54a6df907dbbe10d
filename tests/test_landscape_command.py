"""``vitprobe landscape``: files (CSV, NPZ, figures), interpolation ends, user errors, one
colour scale across compared models."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from landscape_models import tiny_data, tiny_resnet, tiny_vit, tiny_vit_b
from matplotlib.collections import QuadMesh

from vitprobe.cli import main
from vitprobe.data import load_data
from vitprobe.landscape import loss_landscape
from vitprobe.landscape.figures import plot_heatmaps, plot_surfaces

TINY = ("--data", "shapes", "--num-images", "12", "--batch-size", "5", "--quiet")


def test_two_models_write_csv_npz_and_figures(tmp_path, capsys):
    status = main(["landscape", "--model", "py:landscape_models:tiny_vit", "--model",
                   "py:landscape_models:tiny_resnet", "--grid", "3x5", "--span=-0.5:0.5", "--beta-span", "1",
                   *TINY, "--out", str(tmp_path)])
    assert status == 0
    frame = pd.read_csv(tmp_path / "landscape.csv")
    assert list(frame.columns) == ["model", "metric", "alpha", "beta", "value", "images", "seconds"]
    assert sorted(frame.model.unique()) == ["tiny_resnet", "tiny_vit"]
    assert len(frame) == 2 * 2 * 3 * 5
    with np.load(tmp_path / "landscape.npz") as npz:
        assert list(npz["models"]) == ["tiny_vit", "tiny_resnet"]
        np.testing.assert_allclose(npz["alphas_0"], [-0.5, 0, 0.5])
        np.testing.assert_allclose(npz["betas_1"], [-1, -0.5, 0, 0.5, 1])
        assert npz["loss_1"].shape == (5, 3)
        rows = frame[(frame.model == "tiny_resnet") & (frame.metric == "loss")]
        for row in rows.itertuples():
            b = int(np.flatnonzero(npz["betas_1"] == row.beta)[0])
            a = int(np.flatnonzero(npz["alphas_1"] == row.alpha)[0])
            assert npz["loss_1"][b, a] == pytest.approx(row.value, rel=1e-12)
        assert abs(float(npz["cosine_0"])) < 0.5
    for name in ("curves", "contour", "heatmap", "surface"):
        assert (tmp_path / "figures" / f"landscape-{name}.png").stat().st_size > 1000
    assert "center_loss" in capsys.readouterr().out


def test_interpolation_command_ends_at_both_checkpoints(tmp_path):
    status = main(["landscape", "--directions", "interpolate", "--model", "py:landscape_models:tiny_vit",
                   "--to", "py:landscape_models:tiny_vit_b", "--grid", "5", "--span=-1:1", *TINY,
                   "--out", str(tmp_path)])
    assert status == 0
    frame = pd.read_csv(tmp_path / "landscape.csv")
    assert set(frame.model) == {"tiny_vit->tiny_vit_b"} and set(frame.beta) == {0.0}
    loss = frame[frame.metric == "loss"].set_index("alpha").value
    data = load_data("shapes", tiny_vit(), num_images=12, batch_size=12)
    images, labels = data.images(), data.labels()
    with torch.inference_mode():
        for alpha, model in ((0.0, tiny_vit()), (1.0, tiny_vit_b())):
            assert loss[alpha] == pytest.approx(F.cross_entropy(model(images).double(), labels).item(), rel=1e-6)
    assert not (tmp_path / "figures" / "landscape-contour.png").exists()  # 1-D: curves only
    assert (tmp_path / "figures" / "landscape-curves.png").exists()


@pytest.mark.parametrize("extra, message", [
    (("--to", "py:landscape_models:tiny_vit_b"), "--to is only for"),
    (("--grid", "5x"), "--grid"),
    (("--span=1:-1",), "LOW < HIGH"),
    (("--shard", "2/2"), "--shard"),
    (("--bn-stats", "interpolate"), "needs --directions interpolate"),
])
def test_bad_options_are_user_errors(tmp_path, capsys, extra, message):
    status = main(["landscape", "--model", "py:landscape_models:tiny_vit", *TINY, "--grid", "3",
                   "--out", str(tmp_path), *extra])
    assert status == 2
    assert message in capsys.readouterr().err


def test_resume_with_other_arguments_exits_2(tmp_path, capsys):
    assert main(["landscape", "--model", "py:landscape_models:tiny_vit", *TINY, "--grid", "3",
                 "--out", str(tmp_path)]) == 0
    assert main(["landscape", "--model", "py:landscape_models:tiny_vit", *TINY, "--grid", "3",
                 "--seed", "4", "--resume", "--out", str(tmp_path)]) == 2
    assert "seed: stored 0, asked 4" in capsys.readouterr().err


def test_compared_models_share_one_colour_scale():
    data = tiny_data()
    results = [loss_landscape(tiny_vit(), data, grid=(3, 3)),
               loss_landscape(tiny_resnet(), data, grid=(3, 3), span=(-3, 3))]
    low = min(float(r.loss.min()) for r in results)
    high = max(float(r.loss.max()) for r in results)
    assert results[0].loss.max() < high  # the two ranges differ
    figure = plot_heatmaps(results)
    meshes = [c for axis in figure.axes for c in axis.collections if isinstance(c, QuadMesh)]
    assert len(meshes) >= 2  # one per model (and the colour bar)
    for mesh in meshes:
        assert (mesh.norm.vmin, mesh.norm.vmax) == pytest.approx((low, high))
    surfaces = plot_surfaces(results)
    limits = {tuple(axis.get_zlim()) for axis in surfaces.axes}
    assert len(limits) == 1
