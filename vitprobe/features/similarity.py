"""Layer similarity by linear CKA (Kornblith, Norouzi, Lee & Hinton 2019, "Similarity of Neural
Network Representations Revisited"), the ViT-versus-ResNet heatmaps of Raghu et al. 2021 ("Do
Vision Transformers See Like Convolutional Neural Networks?").

CKA is accumulated over mini-batches with the unbiased HSIC estimator, as Nguyen, Raghu &
Kornblith 2021 ("Do Wide and Deep Networks Learn the Same Things?") do, so any number of images
fits in memory::

    CKA = sum_i HSIC_1(K_i, L_i) / sqrt(sum_i HSIC_1(K_i, K_i) * sum_i HSIC_1(L_i, L_i))

where ``K_i = X_i X_i^T`` and ``L_i = Y_i Y_i^T`` are the linear Gram matrices of batch i (each
image's output of a layer flattened, every token and channel) and ``HSIC_1`` is the unbiased
estimator of Song et al. 2012 (:func:`unbiased_hsic`). Batches of fewer than 4 images, for which
it is undefined, are left out and counted in the result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch
from torch import nn

from vitprobe import distributed
from vitprobe.data.batches import DataLike, as_batches, spatial_size
from vitprobe.errors import UserError
from vitprobe.features.taps import taps
from vitprobe.models.loaded import LoadedModel, as_loaded, feature_layers
from vitprobe.models.module_state import eval_mode, module_device
from vitprobe.result import Result, analysis

if TYPE_CHECKING:
    from matplotlib.figure import Figure

SMALLEST_BATCH = 4  # HSIC_1 divides by n (n - 3)


def unbiased_hsic(K: torch.Tensor, L: torch.Tensor) -> torch.Tensor:
    """HSIC_1 of two n x n Gram matrices (Song, Smola, Gretton, Bedo & Borgwardt 2012, eq. 5):
    ``[tr(K~L~) + 1'K~1 1'L~1 / ((n-1)(n-2)) - 2/(n-2) 1'K~L~1] / (n(n-3))``, K~ and L~ being K
    and L with their diagonals set to zero."""
    n = K.shape[0]
    K = K - torch.diag(torch.diagonal(K))
    L = L - torch.diag(torch.diagonal(L))
    trace = (K * L).sum()  # tr(K L) for symmetric L
    sums = K.sum() * L.sum() / ((n - 1) * (n - 2))
    cross = 2.0 / (n - 2) * (K.sum(0) @ L.sum(1))
    return (trace + sums - cross) / (n * (n - 3))


@dataclass(kw_only=True)
class SimilarityResult(Result):
    """Linear CKA between every layer of ``model`` (rows, ``layers``) and every layer of
    ``other_model`` (columns, ``other_layers``; the same model when comparing its layers)."""

    layers: list[str]
    other_model: str
    other_layers: list[str]
    cka: np.ndarray  # [len(layers), len(other_layers)]
    batches: int  # batches the estimate is accumulated over
    skipped_images: int = 0  # images in batches too small for the unbiased estimator

    INDEX: ClassVar[tuple[str, ...]] = ("metric", "layer", "other_model", "other_layer")
    ANNOTATIONS: ClassVar[tuple[str, ...]] = ("depth", "other_depth", "batches")
    REPORTED: ClassVar[tuple[str, ...]] = ()  # a matrix: the heatmap is its figure

    def rows(self) -> list[dict]:
        return [{"metric": "cka", "layer": a, "other_model": self.other_model, "other_layer": b,
                 "value": float(self.cka[i, j]), "depth": i, "other_depth": j,
                 "batches": self.batches}
                for i, a in enumerate(self.layers) for j, b in enumerate(self.other_layers)]

    def plot(self) -> Figure:
        """The CKA heatmap."""
        from vitprobe.features.figures import cka_heatmaps

        return cka_heatmaps([self])

def _grams(loaded: LoadedModel, images: torch.Tensor, layers: list[str]) -> list[torch.Tensor]:
    """The linear Gram matrix (float64) of each layer's flattened outputs on ``images``."""
    with taps(loaded, layers) as outputs, torch.inference_mode():
        loaded.module(images.to(module_device(loaded.module)))
    grams = []
    for name in layers:
        features = outputs[name].reshape(images.shape[0], -1).double()
        grams.append(features @ features.T)
    return grams


@analysis
def layer_similarity(
    model: nn.Module | LoadedModel,
    data: DataLike,
    *,
    layers: list[str] | None = None,
    other: nn.Module | LoadedModel | None = None,
    other_data: DataLike | None = None,
    other_layers: list[str] | None = None,
) -> SimilarityResult:
    """Linear CKA between the outputs of ``layers`` of ``model`` and of ``other_layers`` of
    ``other`` (default: the same model and layers) on the same images.

    ``other_data`` holds those images preprocessed for ``other`` (default: ``data``), batch for
    batch. Layers default to every transformer block of a ViT and every feature stage of a CNN.
    Both models run in eval mode; their training flags are restored afterwards.
    """
    first = as_loaded(model)
    second = first if other is None else as_loaded(other)
    batches = as_batches(data)
    second_batches = batches if other_data is None else as_batches(other_data)
    if len(second_batches) != len(batches) or any(
            a[0].shape[0] != b[0].shape[0] for a, b in zip(batches, second_batches)):
        raise UserError("other_data must hold the same images as data, in batches of the same sizes")
    rows = list(layers) if layers else feature_layers(first, spatial_size(batches[0][0]), "CKA",
                                                       least=1 if other is not None else 2)
    if other_layers:
        columns = list(other_layers)
    elif other is None:
        columns = rows
    else:
        columns = feature_layers(second, spatial_size(second_batches[0][0]), "CKA")
    cross = torch.zeros(len(rows), len(columns), dtype=torch.float64)
    self_rows = torch.zeros(len(rows), dtype=torch.float64)
    self_columns = torch.zeros(len(columns), dtype=torch.float64)
    used, skipped = 0, 0

    def hsic_terms(pair: tuple, index: int, offset: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """The batch's unbiased HSIC of each row layer with itself, of each pair, and of each
        column layer with itself; None for a batch too small for the estimator."""
        (images, _), (other_images, _) = pair
        if images.shape[0] < SMALLEST_BATCH:
            return None
        K = _grams(first, images, rows)
        L = K if second is first and columns == rows else _grams(second, other_images, columns)
        return (torch.stack([unbiased_hsic(k, k).cpu() for k in K]),
                torch.stack([torch.stack([unbiased_hsic(k, l).cpu() for l in L]) for k in K]),
                torch.stack([unbiased_hsic(l, l).cpu() for l in L]))

    with eval_mode(first.module, second.module):
        pairs = list(zip(batches, second_batches))
        for pair, terms in zip(pairs, distributed.map_batches(hsic_terms, pairs)):
            if terms is None:
                skipped += int(pair[0][0].shape[0])
                continue
            self_rows += terms[0]
            cross += terms[1]
            self_columns += terms[2]
            used += 1
    if used == 0:
        raise UserError(f"CKA needs batches of at least {SMALLEST_BATCH} images")
    cka = cross / torch.sqrt(self_rows[:, None] * self_columns[None, :])
    return SimilarityResult(model=first.label, images=batches.num_images - skipped, layers=rows,
                            other_model=second.label, other_layers=columns, cka=cka.numpy(),
                            batches=used, skipped_images=skipped,
                            options={"other_data": None if other_data is None else second_batches.spec})
