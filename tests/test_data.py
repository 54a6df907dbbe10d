"""load_data: the embedded shapes set, image folders and files, and every bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vitprobe import UserError, load_data
from vitprobe.data.batches import as_batches
from vitprobe.data.shapes import CLASS_NAMES, render_shapes, subset_indices
from vitprobe.models.loaded import as_loaded


@pytest.fixture
def model(tiny_vit):
    return as_loaded(tiny_vit)


def test_shapes_is_deterministic_and_balanced(model):
    a = load_data("shapes", model, num_images=40, batch_size=16, seed=3)
    b = load_data("shapes", model, num_images=40, batch_size=16, seed=3)
    c = load_data("shapes", model, num_images=40, batch_size=16, seed=4)
    assert [x.shape[0] for x, _ in a] == [16, 16, 8]
    assert torch.equal(a.images(), b.images()) and torch.equal(a.labels(), b.labels())
    assert not torch.equal(a.images(), c.images())
    assert a.images().shape[1:] == (3, 16, 16) and a.class_names == list(CLASS_NAMES)
    all_labels = render_shapes(range(400), 8).labels
    assert torch.bincount(all_labels).tolist() == [100] * 4


def test_shapes_normalised_with_model_statistics(model):
    batches = load_data("shapes", model, num_images=8, input_size=(24, 40))
    assert batches.images().shape == (8, 3, 24, 40)
    raw = render_shapes(subset_indices(8, 0), (24, 40)).images
    mean = torch.tensor(model.data_config["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(model.data_config["std"]).view(1, 3, 1, 1)
    torch.testing.assert_close(batches.images(), (raw - mean) / std)


def test_shapes_same_scene_at_any_resolution():
    low = render_shapes([5, 6], 32)
    high = render_shapes([5, 6], 128)
    # the object mask at 128 px, pooled to 32 px, agrees with the 32 px mask almost everywhere
    pooled = torch.nn.functional.avg_pool2d(high.masks.float()[:, None], 4)[:, 0] > 0.5
    assert (pooled == low.masks).float().mean() > 0.97
    assert torch.equal(low.labels, high.labels)


def _write_images(folder, count, size=(20, 30), mode="RGB"):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
        array = rng.integers(0, 255, size=(*size, channels), dtype=np.uint8).squeeze()
        Image.fromarray(array, mode=mode).save(folder / f"img{i}.png")


def test_labelled_folder_uses_sorted_class_order(tmp_path, model):
    _write_images(tmp_path / "zebra", 2)
    _write_images(tmp_path / "apple", 3, mode="L")
    _write_images(tmp_path / "mango", 1, size=(7, 50), mode="RGBA")
    batches = load_data(str(tmp_path), model, batch_size=4)
    assert batches.class_names == ["apple", "mango", "zebra"]
    assert batches.labels().tolist() == [0, 0, 0, 1, 2, 2]
    assert batches.images().shape == (6, 3, 16, 16) and not batches.labels_from_model
    subset = load_data(str(tmp_path), model, num_images=4, seed=1)
    again = load_data(str(tmp_path), model, num_images=4, seed=1)
    assert subset.paths == again.paths and len(subset.paths) == 4


def test_unlabelled_images_take_the_model_prediction(tmp_path, model):
    _write_images(tmp_path / "imgs", 3)
    batches = load_data(str(tmp_path / "imgs"), model)
    with torch.no_grad():
        expected = model.module(batches.images()).argmax(-1)
    assert batches.labels_from_model and torch.equal(batches.labels(), expected)
    globbed = load_data(str(tmp_path / "imgs" / "*.png"), model)
    listed = load_data([str(tmp_path / "imgs" / "img1.png")], model)
    assert globbed.num_images == 3 and listed.num_images == 1


def test_bad_data_is_a_clear_error(tmp_path, model):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no images in folder"):
        load_data(str(tmp_path / "empty"), model)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image at all")
    with pytest.raises(UserError, match=f"cannot read image {broken}"):
        load_data(str(broken), model)
    with pytest.raises(UserError, match="data not found"):
        load_data(str(tmp_path / "nowhere"), model)
    with pytest.raises(UserError, match="no image files match"):
        load_data(str(tmp_path / "*.jpg"), model)


def test_as_batches_accepts_every_form():
    x, y = torch.randn(4, 3, 8, 8), torch.arange(4)
    assert as_batches((x, y)).num_images == 4
    assert as_batches([(x, y), (x[:2], y[:2])]).num_images == 6
    assert as_batches(iter([(x, y)])).rebatch(3).batches[1][0].shape[0] == 1


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path, model):
    """A 16-bit grayscale PNG and its 8-bit twin give the same images (to one 8-bit step)."""
    from PIL import Image

    values = np.random.default_rng(0).integers(0, 256, (16, 16)).astype(np.uint8)
    (tmp_path / "eight").mkdir()
    (tmp_path / "sixteen").mkdir()
    Image.fromarray(values, mode="L").save(tmp_path / "eight" / "a.png")
    Image.fromarray(values.astype(np.uint16) * 257).save(tmp_path / "sixteen" / "a.png")
    assert Image.open(tmp_path / "sixteen" / "a.png").mode.startswith("I")
    eight = load_data(str(tmp_path / "eight"), model).images()
    sixteen = load_data(str(tmp_path / "sixteen"), model).images()
    std = min(model.data_config["std"])
    torch.testing.assert_close(sixteen, eight, atol=1.01 / 255 / std, rtol=0)


def test_a_folder_name_with_brackets_is_a_folder_not_a_glob(tmp_path, model):
    from PIL import Image

    folder = tmp_path / "run [2024]"
    folder.mkdir()
    Image.new("RGB", (16, 16), (10, 20, 30)).save(folder / "a.png")
    assert load_data(str(folder), model).num_images == 1
