"""Top-k accuracy, mean loss and expected calibration error on labelled images, with intervals."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vitprobe import distributed
from vitprobe.data.batches import Batch, DataLike, as_batches
from vitprobe.errors import UserError, require_finite
from vitprobe.evaluation.calibration import expected_calibration_error
from vitprobe.evaluation.intervals import bootstrap_interval, wilson_interval
from vitprobe.models.loaded import LoadedModel, as_loaded
from vitprobe.models.module_state import eval_mode, module_device
from vitprobe.models.outputs import check_labels
from vitprobe.models.outputs import logits as output_logits
from vitprobe.result import Result, analysis

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass(kw_only=True)
class EvaluationResult(Result):
    """Per-image outcomes of one model on one labelled set, and their summary.

    ``correct[k]`` says whether the label was among the k highest logits of each image;
    ``confidences`` are top-1 softmax probabilities; ``losses`` per-image cross-entropy.
    ``skipped_top_k`` lists the k that were not computed because the model has fewer
    classes (top-k would be 1 by construction).
    """

    num_classes: int
    losses: np.ndarray
    confidences: np.ndarray
    correct: dict[int, np.ndarray]
    num_bins: int = 15
    confidence_level: float = 0.95
    bootstrap_samples: int = 1000
    seed: int = 0
    skipped_top_k: list[int] = field(default_factory=list)

    def accuracy(self, k: int = 1) -> float:
        return float(self.correct[k].mean())

    @property
    def loss(self) -> float:
        return float(self.losses.mean())

    @property
    def ece(self) -> float:
        return float(expected_calibration_error(self.confidences, self.correct[1], self.num_bins))

    ANNOTATIONS: ClassVar[tuple[str, ...]] = ("interval", "confidence", "classes", "ece_bins")

    def rows(self) -> list[dict]:
        """Rows ``top1``, ``top5`` (Wilson intervals), ``loss`` and ``ece`` (bootstrap)."""
        n, rows = self.images, []
        for k, hits in sorted(self.correct.items()):
            low, high = wilson_interval(int(hits.sum()), n, self.confidence_level)
            rows.append((f"top{k}", float(hits.mean()), low, high, "wilson"))
        loss_ci = bootstrap_interval(lambda idx: self.losses[idx].mean(axis=1), n,
                                     self.bootstrap_samples, self.confidence_level, self.seed)
        rows.append(("loss", self.loss, *loss_ci, "bootstrap"))
        ece_ci = bootstrap_interval(
            lambda idx: np.asarray(expected_calibration_error(self.confidences, self.correct[1],
                                                              self.num_bins, resamples=idx)),
            n, self.bootstrap_samples, self.confidence_level, self.seed)
        rows.append(("ece", self.ece, *ece_ci, "bootstrap"))
        return [{"metric": metric, "value": value, "ci_low": low, "ci_high": high, "interval": interval,
                 "confidence": self.confidence_level, "classes": self.num_classes, "ece_bins": self.num_bins}
                for metric, value, low, high, interval in rows]

    def plot(self) -> Figure:
        """The reliability diagram, as ``vitprobe evaluate`` draws it."""
        from vitprobe.evaluation.figures import reliability_figure

        return reliability_figure([self])

@analysis
@torch.inference_mode()
def evaluate(
    model: LoadedModel | nn.Module,
    data: DataLike,
    *,
    top_k: Sequence[int] = (1, 5),
    num_bins: int = 15,
    bootstrap_samples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> EvaluationResult:
    """Accuracy, loss and calibration of ``model`` on labelled ``data`` (model in eval mode).

    Top-k accuracies get Wilson score intervals; the mean cross-entropy and the expected
    calibration error (Guo et al. 2017: ``num_bins`` equal-width bins of the top-1
    confidence) get percentile-bootstrap intervals over images, seeded by ``seed``.
    A k larger than the number of classes is skipped (listed in ``skipped_top_k``): top-k
    would be 1 by construction. Labels that are the model's own predictions
    (``Batches.labels_from_model``) are refused: accuracy against them is meaningless.
    """
    if (not top_k or min(top_k) < 1 or num_bins < 1 or bootstrap_samples < 1
            or not 0 < confidence < 1):
        raise UserError(f"need top-k values >= 1, ECE bins >= 1, bootstrap resamples >= 1 and a "
                        f"confidence in (0, 1) (got {list(top_k)}, {num_bins}, {bootstrap_samples}, "
                        f"{confidence})")
    loaded = as_loaded(model)
    batches = as_batches(data)
    if batches.labels_from_model:
        raise UserError(
            f"{batches.spec} has no labels (they were taken from the model's own predictions), "
            "so accuracy would be meaningless: evaluate needs a folder with one subfolder per "
            "class or the embedded 'shapes' data")
    module = loaded.module
    device = module_device(module)

    def scored(batch: Batch, index: int, offset: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """Per image: the loss, the top-1 confidence and the rank of the true class (how many
        logits are strictly larger)."""
        images, labels = batch[0].to(device), batch[1].to(device)
        logits = output_logits(module(images)).float()
        if not bool(torch.isfinite(logits).all()):
            require_finite(float("nan"), f"{loaded.label}'s output")
        check_labels(logits, labels)
        target = logits.gather(1, labels[:, None])
        return (F.cross_entropy(logits, labels, reduction="none").cpu(), logits.softmax(-1).amax(-1).cpu(),
                (logits > target).sum(1).cpu(), int(logits.shape[-1]))

    with eval_mode(module):
        losses, confidences, ranks, classes = zip(*distributed.map_batches(scored, batches))
    num_classes = classes[0]
    rank = torch.cat(ranks).numpy()
    kept = [k for k in top_k if k < num_classes]
    return EvaluationResult(
        model=loaded.label,
        images=batches.num_images,
        num_classes=int(num_classes),
        losses=torch.cat(losses).numpy().astype(np.float64),
        confidences=torch.cat(confidences).numpy().astype(np.float64),
        correct={k: rank < k for k in sorted({1, *kept})},
        num_bins=num_bins,
        confidence_level=confidence,
        bootstrap_samples=bootstrap_samples,
        seed=seed,
        skipped_top_k=[k for k in top_k if k >= num_classes and k != 1],
    )
