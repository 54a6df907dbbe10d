"""Accuracy under the ImageNet-C corruptions and the mean corruption error (Hendrycks &
Dietterich 2019, "Benchmarking Neural Network Robustness to Common Corruptions and Perturbations").

Each image of ``data`` is taken back to 8-bit pixels at the model's input resolution (its
normalisation undone), corrupted by imagecorruptions at each severity, normalised again and
classified. ImageNet-C corrupts the 224-pixel centre crops the same way, before normalisation.
With ``E[c, s]`` the top-1 error under corruption c at severity s, the corruption error is
``CE_c = sum_s E[c, s] / sum_s E_baseline[c, s]`` and ``mCE`` the mean of CE_c over the
corruptions (the paper's baseline is AlexNet; here any model, e.g. a ResNet against which a ViT
or a SAM-trained model is compared, as the lecture's SAM table does).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch
from torch import nn

from vitprobe import distributed
from vitprobe.data import rgb_pixels, to_channels
from vitprobe.data.batches import Batch, DataLike, as_batches
from vitprobe.errors import UserError
from vitprobe.models.loaded import LoadedModel, as_loaded
from vitprobe.models.module_state import eval_mode, module_device
from vitprobe.models.outputs import logits
from vitprobe.result import Result, analysis
from vitprobe.robustness.imagenet_c import CORRUPTIONS, SEVERITIES, corrupt_images

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass(kw_only=True)
class CorruptionResult(Result):
    """``accuracy[i, j]``: top-1 accuracy under ``corruptions[i]`` at ``severities[j]``;
    ``baseline_errors`` (same shape) the baseline model's errors, once :func:`relative_to` set them."""

    corruptions: list[str]
    severities: list[int]
    clean_accuracy: float
    accuracy: np.ndarray
    baseline: str | None = None
    baseline_errors: np.ndarray | None = None

    INDEX: ClassVar[tuple[str, ...]] = ("metric", "corruption", "severity")
    ANNOTATIONS: ClassVar[tuple[str, ...]] = ("baseline", "in_mce")
    REPORTED: ClassVar[tuple[str, ...]] = ("clean_top1", "corrupted_top1", "mce")

    @property
    def corruption_errors(self) -> np.ndarray | None:
        """CE_c: each corruption's summed error over the baseline's (NaN where the baseline
        makes no error under that corruption: the ratio is undefined there)."""
        if self.baseline_errors is None:
            return None
        base = self.baseline_errors.sum(1)
        return np.divide((1 - self.accuracy).sum(1), base, out=np.full(len(base), np.nan),
                         where=base > 0)

    @property
    def mce(self) -> float | None:
        """The mean of CE_c over the corruptions where it is defined (all of them, unless the
        baseline is perfect under some; ``in_mce`` in the rows says how many)."""
        errors = self.corruption_errors
        if errors is None or np.isnan(errors).all():
            return None if errors is None else float("nan")
        return float(np.nanmean(errors))

    def rows(self) -> list[dict]:
        rows = [{"metric": "clean_top1", "value": self.clean_accuracy},
                {"metric": "corrupted_top1", "value": float(self.accuracy.mean())}]
        for i, corruption in enumerate(self.corruptions):
            rows += [{"metric": "top1", "corruption": corruption, "severity": s,
                      "value": float(self.accuracy[i, j])} for j, s in enumerate(self.severities)]
        errors = self.corruption_errors
        if errors is not None:
            rows += [{"metric": "corruption_error", "corruption": c, "value": float(e),
                      "baseline": self.baseline}
                     for c, e in zip(self.corruptions, errors)]
            rows.append({"metric": "mce", "value": self.mce, "baseline": self.baseline,
                         "in_mce": int(np.isfinite(errors).sum())})
        return rows

    def plot(self) -> Figure:
        """Accuracy against severity per corruption."""
        from vitprobe.robustness.figures import severity_figure

        return severity_figure([self])

def relative_to(result: CorruptionResult, baseline: CorruptionResult) -> CorruptionResult:
    """``result`` with its corruption errors relative to ``baseline``'s (same corruptions and
    severities)."""
    if (baseline.corruptions, baseline.severities) != (result.corruptions, result.severities):
        raise UserError("the baseline was measured under other corruptions or severities")
    return dataclasses.replace(result, baseline=baseline.model, baseline_errors=1 - baseline.accuracy)


def _pixels(images: torch.Tensor, model: LoadedModel) -> np.ndarray:
    """``model``'s normalised (B, C, H, W) images as (B, H, W, 3) uint8 pixels (gray repeated)."""
    return (rgb_pixels(images.double(), model) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _normalised(pixels: np.ndarray, model: LoadedModel, like: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) uint8 pixels as ``model``'s normalised input, in ``like``'s dtype and device."""
    mean, std = model.normalisation(torch.float64)
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).double() / 255
    return ((to_channels(images, model.in_chans) - mean) / std).to(like)


def _seed(*keys: int) -> int:
    """One 32-bit seed for each (seed, batch, corruption, severity)."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1)[0])


@analysis
def corruption_accuracy(model: nn.Module | LoadedModel, data: DataLike, *,
                        corruptions: Sequence[str] = CORRUPTIONS,
                        severities: Sequence[int] = SEVERITIES, seed: int = 0) -> CorruptionResult:
    """Top-1 accuracy of ``model`` on ``data`` clean and under each corruption at each severity
    (the random corruptions seeded by ``seed``, the corruption and severity). ``data`` must carry
    true labels and the model's normalisation (``load_data`` gives both)."""
    loaded = as_loaded(model)
    batches = as_batches(data)
    if batches.labels_from_model or bool((batches.labels() < 0).any()):
        raise UserError("corruption accuracy needs labelled data (a class-folder dataset or shapes)")
    device = module_device(loaded.module)
    corruptions, severities = list(corruptions), list(severities)

    def counted(batch: Batch, number: int, offset: int) -> tuple[int, np.ndarray]:
        """The batch's correct predictions clean and under each corruption and severity."""
        images, labels = batch[0], batch[1].to(device)
        clean = int((logits(loaded.module(images.to(device))).argmax(-1) == labels).sum())
        correct = np.zeros((len(corruptions), len(severities)))
        pixels = _pixels(images, loaded)
        for i, corruption in enumerate(corruptions):
            for j, severity in enumerate(severities):
                corrupted = corrupt_images(pixels, corruption, severity, seed=_seed(seed, number, i, j))
                inputs = _normalised(corrupted, loaded, images).to(device)
                correct[i, j] = int((logits(loaded.module(inputs)).argmax(-1) == labels).sum())
        return clean, correct

    with eval_mode(loaded.module), torch.inference_mode():
        counts = distributed.map_batches(counted, batches)
    clean = sum(c for c, _ in counts)
    correct = np.sum([c for _, c in counts], axis=0)
    total = batches.num_images
    return CorruptionResult(model=loaded.label, images=total, corruptions=corruptions,
                            severities=severities, clean_accuracy=clean / total,
                            accuracy=correct / total)
