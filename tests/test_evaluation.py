"""evaluate(): accuracy, loss and ECE against hand counts, scipy and DeiT's head averaging."""

from __future__ import annotations

import math

import numpy as np
import pytest
import timm
import torch
from scipy.stats import binomtest
from torch import nn

from vitprobe.data.batches import Batches
from vitprobe.errors import UserError
from vitprobe.evaluation import evaluate, expected_calibration_error, reliability_figure, wilson_interval


class FixedLogits(nn.Module):
    """Returns the logits stored for each input: image i is a tensor filled with i."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.table = nn.Parameter(logits.clone(), requires_grad=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.table[images[:, 0, 0, 0].long()]


# 8 images, 6 classes; label of each image and the class order of its logits
LABELS = [0, 1, 2, 3, 4, 5, 0, 1]
# rank of the true class (0 = top-1): hand-placed
RANKS = [0, 0, 1, 4, 5, 0, 2, 3]


def _case() -> tuple[FixedLogits, list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
    logits = torch.zeros(len(LABELS), 6)
    for i, (label, rank) in enumerate(zip(LABELS, RANKS)):
        order = [c for c in range(6) if c != label]
        order.insert(rank, label)  # order[j] gets the j-th largest logit
        for position, cls in enumerate(order):
            logits[i, cls] = 3.0 - 0.7 * position + 0.05 * i
    images = torch.arange(len(LABELS), dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 3, 2, 2)
    labels = torch.tensor(LABELS)
    data = [(images[:5], labels[:5]), (images[5:], labels[5:])]
    return FixedLogits(logits), data, logits


def test_accuracy_loss_and_ece_match_hand_counts() -> None:
    model, data, logits = _case()
    result = evaluate(model, data, bootstrap_samples=200)
    # hand count: top-1 hits where rank 0 (images 0, 1, 5); top-5 hits where rank < 5
    assert result.accuracy(1) == 3 / 8
    assert result.accuracy(5) == 7 / 8
    labels = torch.tensor(LABELS)
    expected_loss = float(torch.nn.functional.cross_entropy(logits, labels))
    assert result.loss == pytest.approx(expected_loss, rel=1e-6)
    # ECE by hand: loop over the 15 bins
    probs = logits.softmax(-1)
    conf = probs.max(-1).values.numpy().astype(np.float64)
    hit = (probs.argmax(-1) == labels).numpy()
    ece = 0.0
    for b in range(15):
        lo, hi = b / 15, (b + 1) / 15
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            ece += inside.sum() / 8 * abs(hit[inside].mean() - conf[inside].mean())
    assert result.ece == pytest.approx(ece, abs=1e-12)

    frame = result.to_frame().set_index("metric")
    assert list(frame.index) == ["top1", "top5", "loss", "ece"]
    assert frame.loc["top1", "ci_low"] == pytest.approx(wilson_interval(3, 8)[0])
    for metric in frame.index:
        assert frame.loc[metric, "ci_low"] <= frame.loc[metric, "value"] <= frame.loc[metric, "ci_high"]
    assert (frame["images"] == 8).all() and (frame["classes"] == 6).all()


def test_bootstrap_intervals_are_seeded_and_vectorised_ece_matches_loop() -> None:
    model, data, _ = _case()
    a = evaluate(model, data, bootstrap_samples=300, seed=3).to_frame()
    b = evaluate(model, data, bootstrap_samples=300, seed=3).to_frame()
    c = evaluate(model, data, bootstrap_samples=300, seed=4).to_frame()
    assert a.drop(columns="seconds").equals(b.drop(columns="seconds"))
    assert not a["ci_low"].equals(c["ci_low"]) or not a["ci_high"].equals(c["ci_high"])
    rng = np.random.default_rng(0)
    conf, hit = rng.uniform(0.2, 1, 50), rng.uniform(size=50) < 0.6
    idx = rng.integers(0, 50, size=(7, 50))
    batched = expected_calibration_error(conf, hit, 15, resamples=idx)
    assert batched == pytest.approx([expected_calibration_error(conf[i], hit[i], 15) for i in idx])


@pytest.mark.parametrize("successes,n", [(0, 10), (3, 8), (10, 10), (731, 1000)])
def test_wilson_interval_matches_scipy(successes: int, n: int) -> None:
    expected = binomtest(successes, n).proportion_ci(0.95, method="wilson")
    low, high = wilson_interval(successes, n, 0.95)
    assert low == pytest.approx(expected.low, abs=1e-12)
    assert high == pytest.approx(expected.high, abs=1e-12)


def test_top5_is_skipped_with_fewer_classes(tiny_vit, tiny_batches) -> None:
    result = evaluate(tiny_vit, tiny_batches, bootstrap_samples=50)
    assert result.skipped_top_k == [5]
    assert list(result.to_frame()["metric"]) == ["top1", "loss", "ece"]
    images = torch.cat([x for x, _ in tiny_batches])
    labels = torch.cat([y for _, y in tiny_batches])
    with torch.no_grad():
        assert result.accuracy(1) == pytest.approx(float((tiny_vit(images).argmax(-1) == labels).double().mean()))
    reliability_figure([result])


def test_deit_distilled_uses_the_averaged_heads() -> None:
    model = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, num_classes=7,
                              img_size=32, depth=2)
    model.set_distilled_training(True)  # only changes training-mode outputs
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(6, 3, 32, 32, generator=generator)
    with torch.no_grad():
        tokens = model.eval().forward_features(images)
        averaged = (model.head(tokens[:, 0]) + model.head_dist(tokens[:, 1])) / 2
        cls_only = model.head(tokens[:, 0])
    labels = averaged.argmax(-1)
    labels[3:] = torch.tensor([0, 1, 2])  # half right by the averaged heads, by construction
    result = evaluate(model, (images, labels), bootstrap_samples=20)
    assert result.accuracy(1) == pytest.approx(float((averaged.argmax(-1) == labels).double().mean()))
    expected = float(torch.nn.functional.cross_entropy(averaged, labels))
    assert result.loss == pytest.approx(expected, rel=1e-5)
    assert not math.isclose(expected, float(torch.nn.functional.cross_entropy(cls_only, labels)))


def test_labels_from_model_are_refused(tiny_vit, tiny_batches) -> None:
    data = Batches(tiny_batches, spec="my-photos", labels_from_model=True)
    with pytest.raises(UserError, match="meaningless"):
        evaluate(tiny_vit, data)


def test_out_of_range_labels_are_a_user_error(tiny_vit) -> None:
    with pytest.raises(UserError, match="3 classes"):
        evaluate(tiny_vit, (torch.randn(2, 3, 16, 16), torch.tensor([0, 7])))
