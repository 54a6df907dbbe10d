"""Expected calibration error with equal-width confidence bins (Guo et al. 2017)."""

from __future__ import annotations

import numpy as np


def confidence_bins(confidences: np.ndarray, num_bins: int = 15) -> np.ndarray:
    """Bin index of each confidence: bin b holds (b/M, (b+1)/M], bin 0 also holds 0."""
    if num_bins < 1:
        raise ValueError("ECE needs at least one bin")
    bins = np.ceil(np.asarray(confidences, dtype=np.float64) * num_bins).astype(np.int64) - 1
    return np.clip(bins, 0, num_bins - 1)


def expected_calibration_error(
    confidences: np.ndarray, correct: np.ndarray, num_bins: int = 15,
    resamples: np.ndarray | None = None,
) -> np.ndarray | float:
    """ECE = sum over bins of |B_b| / n * |accuracy(B_b) - mean confidence(B_b)|.

    ``confidences`` are the top-1 softmax probabilities and ``correct`` whether top-1 was
    right. With ``resamples`` (an index array of shape (R, n), as the bootstrap draws),
    the ECE of every resample is returned at once, shape (R,).
    """
    confidences = np.asarray(confidences, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    bins = confidence_bins(confidences, num_bins)
    index = np.arange(len(confidences))[None, :] if resamples is None else np.asarray(resamples)
    rows, n = index.shape
    # |B| * |acc - conf| = |sum(correct) - sum(confidence)| within a bin
    flat = (np.arange(rows)[:, None] * num_bins + bins[index]).ravel()
    gap = (np.bincount(flat, weights=correct[index].ravel(), minlength=rows * num_bins)
           - np.bincount(flat, weights=confidences[index].ravel(), minlength=rows * num_bins))
    ece = np.abs(gap).reshape(rows, num_bins).sum(axis=1) / n
    return float(ece[0]) if resamples is None else ece


def reliability_table(
    confidences: np.ndarray, correct: np.ndarray, num_bins: int = 15,
) -> dict[str, np.ndarray]:
    """Per bin: lower and upper edge, image count, accuracy and mean confidence (NaN if empty)."""
    confidences = np.asarray(confidences, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    bins = confidence_bins(confidences, num_bins)
    counts = np.bincount(bins, minlength=num_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.bincount(bins, weights=correct, minlength=num_bins) / counts
        confidence = np.bincount(bins, weights=confidences, minlength=num_bins) / counts
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    return {"low": edges[:-1], "high": edges[1:], "count": counts,
            "accuracy": accuracy, "confidence": confidence}
