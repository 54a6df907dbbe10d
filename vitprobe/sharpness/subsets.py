"""``sharpness_subsets``: how sure a lambda_max is, from disjoint image subsets.

A paper reports one lambda_max of one set of images; its sampling error is rarely given. Here the
images are split into ``subsets`` disjoint, equally sized parts (in order, the remainder left out),
the leading eigenvalues (and, if asked, the trace) are measured on each part, and the spread over
parts is reported: mean, standard deviation (ddof 1) and a Student-t confidence interval for the
mean. The same is done on the first n images of every part for n = size / 2^j (down to one
batch's worth or 2 images), which draws lambda_1 against the number of images: where the curve
has settled, the image count is enough.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np
from scipy import stats
from torch import nn

from vitprobe.data.batches import Batches, DataLike, as_batches
from vitprobe.errors import UserError
from vitprobe.models.loaded import LoadedModel, as_loaded
from vitprobe.result import Result, analysis
from vitprobe.sharpness.loss import LossFn
from vitprobe.sharpness.operator import HessianOperator
from vitprobe.sharpness.spectrum import eigenpairs
from vitprobe.sharpness.trace import trace_estimate
from vitprobe.sharpness.vectors import ParamFilter

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def t_summary(values: np.ndarray, confidence: float) -> tuple[float, float, float, float]:
    """(mean, std with ddof 1, ci_low, ci_high) of ``values``; NaN spread for fewer than 2."""
    mean = float(np.mean(values))
    if len(values) < 2:
        return mean, float("nan"), float("nan"), float("nan")
    std = float(np.std(values, ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, len(values) - 1)) * std / np.sqrt(len(values))
    return mean, std, mean - half, mean + half


def split(batches: Batches, parts: int, size: int | None = None) -> list[Batches]:
    """``parts`` disjoint consecutive parts of ``size`` images (default: as many as fit)."""
    images, labels = batches.images(), batches.labels()
    size = size or len(images) // parts
    if size < 1 or parts * size > len(images):
        raise UserError(f"{len(images)} images cannot make {parts} subsets of {size or 0} images")
    batch = max(len(b[0]) for b in batches)
    return [Batches([(images[i * size:(i + 1) * size], labels[i * size:(i + 1) * size])], batches.spec)
            .rebatch(batch) for i in range(parts)]


@dataclass(kw_only=True)
class SubsetsResult(Result):
    """Per subset: the top-k eigenvalues (subsets, k) and traces; per image count, lambda_1 of
    every subset's first images (sizes, subsets)."""

    subset_size: int
    eigenvalues: np.ndarray
    traces: np.ndarray | None
    sizes: list[int]
    lambda_1_by_size: np.ndarray
    confidence: float = 0.95

    INDEX: ClassVar[tuple[str, ...]] = ("metric", "k", "subset", "subset_images")
    LABELS: ClassVar[dict[str, str]] = {"eigenvalue_mean": "lambda_{k}_mean",
                                        "eigenvalue_std": "lambda_{k}_std"}
    ANNOTATIONS: ClassVar[tuple[str, ...]] = ("subsets", "confidence")
    REPORTED: ClassVar[tuple[str, ...]] = ("eigenvalue_mean", "trace_mean")

    def rows(self) -> list[dict]:
        """Rows ``eigenvalue`` / ``trace`` per ``subset``, their ``*_mean`` (with the interval) and
        ``*_std``, and ``lambda_1_by_images`` (mean over subsets, per ``subset_images``)."""
        rows = []
        base = {"subsets": len(self.eigenvalues), "confidence": self.confidence}
        series: list[tuple[str, int | None, np.ndarray]] = [
            ("eigenvalue", k + 1, self.eigenvalues[:, k]) for k in range(self.eigenvalues.shape[1])]
        if self.traces is not None:
            series.append(("trace", None, self.traces))
        for metric, k, values in series:
            for index, value in enumerate(values):
                rows.append({**base, "metric": metric, "k": k, "subset": index, "value": float(value),
                             "subset_images": self.subset_size})
            mean, std, low, high = t_summary(values, self.confidence)
            rows.append({**base, "metric": f"{metric}_mean", "k": k, "value": mean, "ci_low": low,
                         "ci_high": high, "subset_images": self.subset_size})
            rows.append({**base, "metric": f"{metric}_std", "k": k, "value": std,
                         "subset_images": self.subset_size})
        for size, values in zip(self.sizes, self.lambda_1_by_size):
            mean, std, low, high = t_summary(values, self.confidence)
            rows.append({**base, "metric": "lambda_1_by_images", "k": 1, "value": mean,
                         "ci_low": low, "ci_high": high, "subset_images": size})
        return rows

    def plot(self) -> Figure:
        """Lambda_1 against the number of images, with its interval."""
        return subsets_figure([self])

def _sizes(size: int, smallest: int) -> list[int]:
    sizes = [size]
    while sizes[-1] // 2 >= smallest:
        sizes.append(sizes[-1] // 2)
    return sorted(sizes)


@analysis
def sharpness_subsets(model: nn.Module | LoadedModel, data: DataLike, *, subsets: int, k: int = 1,
                      tol: float = 1e-3, trace: bool = False, num_probes: int = 60,
                      params: ParamFilter = None, loss_fn: LossFn | None = None, seed: int = 0,
                      confidence: float = 0.95, sizes: Sequence[int] | None = None) -> SubsetsResult:
    """The top-k eigenvalues (and trace) on ``subsets`` disjoint parts of ``data``, and lambda_1
    on each part's first ``sizes`` images (default: halvings of the part size)."""
    if subsets < 2:
        raise UserError(f"need at least 2 subsets to measure a spread, got {subsets}")
    loaded = as_loaded(model)
    batches = as_batches(data)
    parts = split(batches, subsets)
    size = parts[0].num_images
    batch = max(len(b[0]) for b in batches)
    sizes = sorted(sizes) if sizes else _sizes(size, min(batch, max(2, size // 8)))

    def spectrum(part: Batches) -> tuple[np.ndarray, HessianOperator]:
        operator = HessianOperator(loaded, part, params=params, loss_fn=loss_fn)
        pairs = eigenpairs(operator, k=min(k, operator.size), tol=tol, seed=seed)
        return pairs.values, operator

    eigenvalues, traces = [], []
    by_size = np.zeros((len(sizes), subsets))
    for index, part in enumerate(parts):
        for row, count in enumerate(sizes):
            head = split(part, 1, count)[0] if count < size else part
            values, operator = spectrum(head)
            by_size[row, index] = values[0]
            if count == size:
                eigenvalues.append(values)
                if trace:
                    traces.append(trace_estimate(operator, num_probes=num_probes, seed=seed).trace)
            operator.release()
    return SubsetsResult(model=loaded.label, images=subsets * size, subset_size=size,
                         eigenvalues=np.array(eigenvalues), traces=np.array(traces) if trace else None,
                         sizes=list(sizes), lambda_1_by_size=by_size, confidence=confidence)


def subsets_figure(results: list[SubsetsResult]):
    """lambda_1 (mean over subsets, with its interval) against the number of images, per model."""
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5, 3.5))
    for result in results:
        summaries = np.array([t_summary(values, result.confidence) for values in result.lambda_1_by_size])
        axis.plot(result.sizes, summaries[:, 0], marker="o", label=result.model)
        axis.fill_between(result.sizes, summaries[:, 2], summaries[:, 3], alpha=0.2)
    axis.set_xscale("log", base=2)
    axis.set_xlabel("images per subset")
    axis.set_ylabel(r"$\lambda_1$ (mean over subsets)")
    axis.set_title(f"{int(100 * results[0].confidence)}% interval over {results[0].eigenvalues.shape[0]} "
                   "disjoint subsets", fontsize=9)
    axis.legend(fontsize=8)
    figure.tight_layout()
    return figure
