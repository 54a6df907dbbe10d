"""Layer similarity (CKA) and feature frequency against independent ground truths: a numpy
unbiased HSIC written from Song et al.'s formula, the invariances CKA is defined to have, and
feature maps whose Fourier spectrum is known in closed form."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from vitprobe.errors import UserError
from vitprobe.features import feature_frequency, layer_similarity, unbiased_hsic
from vitprobe.features.taps import spatial
from vitprobe.models.loaded import as_loaded


def numpy_hsic(K: np.ndarray, L: np.ndarray) -> float:
    """Song et al. 2012, eq. 5, term by term."""
    n = K.shape[0]
    Kt, Lt = K.copy(), L.copy()
    np.fill_diagonal(Kt, 0)
    np.fill_diagonal(Lt, 0)
    ones = np.ones(n)
    return float((np.trace(Kt @ Lt) + (ones @ Kt @ ones) * (ones @ Lt @ ones) / ((n - 1) * (n - 2))
                  - 2 / (n - 2) * ones @ Kt @ Lt @ ones) / (n * (n - 3)))


def numpy_cka(xs: list[np.ndarray], ys: list[np.ndarray]) -> float:
    """Minibatch CKA: sums of per-batch HSIC_1 (Nguyen, Raghu & Kornblith 2021)."""
    cross = sum(numpy_hsic(x @ x.T, y @ y.T) for x, y in zip(xs, ys))
    xx = sum(numpy_hsic(x @ x.T, x @ x.T) for x in xs)
    yy = sum(numpy_hsic(y @ y.T, y @ y.T) for y in ys)
    return cross / math.sqrt(xx * yy)


class Representations(nn.Module):
    """Three layers over flattened inputs: ``a`` = X, ``rotated`` = c X Q (Q orthogonal), and
    ``other`` = tanh(X W), a representation CKA should find only partly similar."""

    def __init__(self, dim: int, scale: float) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=torch.float64))
        self.a = nn.Flatten()
        self.rotated = nn.Linear(dim, dim, bias=False).double()
        self.rotated.weight.data = scale * q.T
        self.mix = nn.Linear(dim, dim, bias=False).double()
        self.mix.weight.data = torch.randn(dim, dim, generator=generator, dtype=torch.float64)
        self.other = nn.Tanh()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.a(images)
        self.rotated(x)
        return self.other(self.mix(x))


@pytest.fixture
def representations():
    torch.manual_seed(1)
    images = torch.randn(40, 2, 3, 3, dtype=torch.float64)
    return Representations(18, scale=7.5), images


def test_unbiased_hsic_matches_song_et_al():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(12, 5)), rng.normal(size=(12, 3))
    K, L = x @ x.T, y @ y.T
    assert float(unbiased_hsic(torch.from_numpy(K), torch.from_numpy(L))) == pytest.approx(
        numpy_hsic(K, L), rel=1e-12)


def test_cka_is_one_on_itself_and_invariant_to_rotation_and_scale(representations):
    model, images = representations
    result = layer_similarity(model, [(images, torch.zeros(40))], layers=["a", "rotated", "other"])
    cka = result.cka
    np.testing.assert_allclose(np.diag(cka), 1.0, atol=1e-12)
    np.testing.assert_allclose(cka, cka.T, atol=1e-12)
    assert cka[0, 1] == pytest.approx(1.0, abs=1e-10)  # CKA(X, c X Q) = CKA(X, X)
    assert cka[0, 2] == pytest.approx(cka[1, 2], abs=1e-10)  # and against anything else too
    assert cka[0, 2] < 0.95  # the control: a nonlinear mixture is not the same representation


def test_minibatch_cka_matches_the_numpy_reference(representations):
    model, images = representations
    x = images.reshape(40, -1).numpy()
    y = np.tanh(x @ model.mix.weight.data.numpy().T)
    full = layer_similarity(model, [(images, torch.zeros(40))], layers=["a"], other_layers=["other"])
    assert full.cka[0, 0] == pytest.approx(numpy_cka([x], [y]), rel=1e-10)
    # batches of 8 and a last batch of 3, too small for HSIC_1: left out and counted
    data = [(images[i:i + 8], torch.zeros(8)) for i in range(0, 32, 8)] + [(images[32:35], torch.zeros(3))]
    batched = layer_similarity(model, data, layers=["a"], other_layers=["other"])
    expected = numpy_cka([x[i:i + 8] for i in range(0, 32, 8)], [y[i:i + 8] for i in range(0, 32, 8)])
    assert batched.cka[0, 0] == pytest.approx(expected, rel=1e-10)
    assert batched.batches == 4 and batched.skipped_images == 3 and batched.images == 32
    frame = batched.to_frame()
    assert list(frame[["metric", "layer", "other_layer"]].iloc[0]) == ["cka", "a", "other"]


def test_cross_model_similarity_on_the_demo_zoo():
    from vitprobe.data import load_data
    from vitprobe.models import load_model

    vit, resnet = load_model("demo:vit"), load_model("demo:resnet")
    data = load_data("shapes", vit, num_images=16, batch_size=8)
    within = layer_similarity(vit, data)
    assert within.layers == [f"blocks.{i}" for i in range(4)]
    np.testing.assert_allclose(np.diag(within.cka), 1.0, atol=1e-9)
    across = layer_similarity(vit, data, other=resnet, other_data=load_data("shapes", resnet, num_images=16,
                                                                          batch_size=8))
    assert across.cka.shape == (4, len(across.other_layers)) and across.other_model == "demo:resnet"
    assert np.all((across.cka > 0) & (across.cka < 1))
    with pytest.raises(UserError, match="same images"):
        layer_similarity(vit, data, other=resnet, other_data=load_data("shapes", resnet, num_images=8))


class Tap(nn.Module):
    """A CNN whose layer ``tap`` outputs the input image itself: its feature map is known."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.tap = nn.Identity()
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 3))

    def forward(self, x):
        return self.head(self.tap(x))


def wave(size: int, frequency: int, a: float, b: float) -> torch.Tensor:
    """a + b cos(2 pi f (i + j) / H): amplitude a H W at frequency 0, b H W / 2 at (f, f)."""
    i = torch.arange(size, dtype=torch.float64)
    return a + b * torch.cos(2 * math.pi * frequency * (i[:, None] + i[None, :]) / size)


@pytest.mark.parametrize("frequency", [1, 3])
def test_relative_log_amplitude_of_a_known_spectrum(frequency):
    size, a, b = 8, 2.0, 0.5
    images = wave(size, frequency, a, b).expand(5, 2, size, size)  # float64: no rounding residue
    result = feature_frequency(Tap(2).double(), images, layers=["tap"])
    area = size * size
    floor = math.log(1e-6) - math.log(a * area + 1e-6)  # frequencies with no energy
    expected = np.full(size // 2, floor)
    expected[0] = 0.0
    expected[frequency] = math.log(b * area / 2 + 1e-6) - math.log(a * area + 1e-6)
    np.testing.assert_allclose(result.amplitudes[0], expected, atol=1e-4)
    np.testing.assert_allclose(result.frequencies[0], [0, 0.25, 0.5, 0.75])
    assert result.high[0] == pytest.approx(expected[-1], abs=1e-4)  # (H/2 - 1)/H cycles: 3 here
    row = result.to_frame().query("metric == 'high_frequency_log_amplitude'").iloc[0]
    assert row["layer"] == "tap" and row["grid"] == "8x8"


def test_vit_tokens_are_laid_out_on_the_patch_grid_without_the_prefix():
    vit = as_loaded(VisionTransformer(img_size=16, patch_size=4, embed_dim=8, depth=1, num_heads=2,
                                      num_classes=3))
    maps = torch.randn(2, 8, 4, 4)
    tokens = torch.cat([torch.full((2, 1, 8), 99.0), maps.flatten(2).transpose(1, 2)], dim=1)
    assert torch.equal(spatial(vit, tokens, (16, 16), "blocks.0"), maps)
    result = feature_frequency(vit, torch.randn(3, 3, 16, 16))
    assert result.layers == ["blocks.0"] and result.grids == [(4, 4)]


def test_non_square_maps_are_refused():
    with pytest.raises(UserError, match="square maps"):
        feature_frequency(Tap(1), torch.randn(2, 1, 8, 6), layers=["tap"])


def test_similarity_and_frequency_commands(tmp_path, capsys):
    import pandas as pd

    from vitprobe.cli import main

    common = ["--num-images", "8", "--batch-size", "8", "--quiet"]
    out = tmp_path / "sim"
    assert main(["similarity", "--model", "demo:vit", "--against", "demo:resnet", *common,
                 "--out", str(out)]) == 0
    table = pd.read_csv(out / "similarity.csv")
    assert set(table.other_model) == {"demo:resnet"} and len(table) == 4 * 4
    assert (out / "figures" / "cka.png").stat().st_size > 0
    out = tmp_path / "freq"
    assert main(["frequency", "--model", "demo:resnet", "--layer", "layer1", *common, "--out", str(out)]) == 0
    table = pd.read_csv(out / "frequency.csv")
    assert set(table.layer) == {"layer1"} and (out / "figures" / "frequency.png").is_file()
    capsys.readouterr()
    assert main(["frequency", "--model", "demo:resnet", "--layer", "layer9", *common,
                 "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no layer 'layer9'" in err and "layer1" in err
