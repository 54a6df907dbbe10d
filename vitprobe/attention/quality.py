"""How good is a map: localisation against object masks and faithfulness by perturbation.

Localisation, when masks are given (both with the mask area as the chance baseline):

- ``mass_in_mask``: the fraction of a map's (non-negative) mass inside the object mask, Arras,
  Osman & Samek 2022's relevance mass accuracy (quantus ``RelevanceMassAccuracy``);
- ``pointing_game``: the fraction of images whose map peaks inside the mask (Zhang et al. 2018,
  without their 15-pixel tolerance; quantus ``PointingGame``).

Faithfulness, always (the explained class is the map's target, else the model's prediction):

- ``deletion_auc`` / ``insertion_auc`` (Petsiuk, Das & Saenko 2018, RISE): the softmax
  probability of the explained class as the most salient pixels are set to black in ``steps``
  equal chunks (deletion, lower is better), or put back one chunk at a time into a blurred copy
  (insertion, Gaussian kernel 11, sigma 5, as RISE; higher is better); the area under each curve
  over the fraction of pixels, by the trapezoid rule;
- ``positive_perturbation_auc`` / ``negative_perturbation_auc`` (Chefer, Gur & Wolf 2021, their
  ``pertubation_eval_from_hdf5.py``): top-1 accuracy against the explained class as 0, 10, ...,
  90 % of the pixels, most salient first (positive, lower is better) or least salient first
  (negative, higher is better), are set to black; the area under the accuracy curve over those
  fractions (trapezoid rule, x from 0 to 0.9).

Maps are bilinearly resized to the image size; ties in a map are broken by pixel order. Every
per-image value has its standard error over images. :func:`random_maps` is the control a
method has to beat.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch
from torch import nn
from torchvision.transforms.functional import gaussian_blur

from vitprobe import distributed
from vitprobe.attention.maps import SaliencyResult
from vitprobe.data.batches import DataLike, as_batches, spatial_size
from vitprobe.errors import UserError
from vitprobe.models.loaded import LoadedModel, as_loaded
from vitprobe.models.module_state import eval_mode, module_device
from vitprobe.models.outputs import logits
from vitprobe.result import Result, analysis

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PERTURBATION_FRACTIONS = np.round(np.arange(10) / 10, 1)  # Chefer et al.: 0, 10, ..., 90 %
BLUR_KERNEL, BLUR_SIGMA = 11, 5.0  # RISE's insertion substrate


@dataclass(kw_only=True)
class MapQualityResult(Result):
    """Per-image localisation scores (None without masks) and perturbation curves of one map
    method: ``deletion``/``insertion`` (images, steps + 1) probabilities at ``fractions``;
    ``positive``/``negative`` (images, 10) correct (1) or not (0) at
    :data:`PERTURBATION_FRACTIONS`."""

    method: str
    mass_in_mask: np.ndarray | None
    pointing_hits: np.ndarray | None
    mask_area: np.ndarray | None
    fractions: np.ndarray
    deletion: np.ndarray
    insertion: np.ndarray
    positive: np.ndarray
    negative: np.ndarray

    INDEX: ClassVar[tuple[str, ...]] = ("metric", "method")
    LABELS: ClassVar[dict[str, str]] = {metric: f"{metric}[{{method}}]" for metric in (
        "mass_in_mask", "pointing_game", "deletion_auc", "insertion_auc", "positive_perturbation_auc",
        "negative_perturbation_auc")}
    REPORTED: ClassVar[tuple[str, ...]] = ("mass_in_mask", "pointing_game", "negative_perturbation_auc")

    @property
    def per_image(self) -> dict[str, np.ndarray]:
        """Each metric's value per image (its mean over images is the reported value)."""
        values = {
            "deletion_auc": np.trapezoid(self.deletion, self.fractions, axis=1),
            "insertion_auc": np.trapezoid(self.insertion, self.fractions, axis=1),
            "positive_perturbation_auc": np.trapezoid(self.positive, PERTURBATION_FRACTIONS, axis=1),
            "negative_perturbation_auc": np.trapezoid(self.negative, PERTURBATION_FRACTIONS, axis=1),
        }
        if self.mass_in_mask is not None and self.pointing_hits is not None:
            values = {"mass_in_mask": self.mass_in_mask,
                      "pointing_game": self.pointing_hits.astype(float),
                      "mask_area": self.mask_area, **values}
        return values

    def rows(self) -> list[dict]:
        rows = []
        for metric, values in self.per_image.items():
            values = values[np.isfinite(values)]
            error = float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else float("nan")
            rows.append({"metric": metric, "method": self.method, "value": float(values.mean()),
                         "std_error": error})
        return rows

    def plot(self) -> Figure:
        """One panel per map-quality metric, as ``vitprobe map-quality`` draws it."""
        from vitprobe.attention.figures import quality_figure

        return quality_figure(self.to_frame())

def random_maps(like: SaliencyResult, seed: int = 0) -> SaliencyResult:
    """The control: uniform random maps at the image resolution, one per image of ``like``."""
    generator = np.random.default_rng(seed)
    images = like.maps.shape[0]
    maps = generator.random((images, 1, *like.input_size))
    return SaliencyResult(model=like.model, images=images, method="random", maps=maps,
                          sources=["random"], input_size=like.input_size, targets=like.targets)


def _order(maps: torch.Tensor) -> torch.Tensor:
    """Pixel indices (images, H*W) from the most to the least salient (ties in pixel order)."""
    return torch.sort(maps.flatten(1), dim=1, descending=True, stable=True).indices


def _replace(images: torch.Tensor, substrate: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """``images`` with the pixels ``indices`` (images, k) taken from ``substrate``, all channels."""
    flat, source = images.flatten(2).clone(), substrate.flatten(2)
    index = indices[:, None, :].expand(-1, images.shape[1], -1)
    flat.scatter_(2, index, source.gather(2, index))
    return flat.view_as(images)


@analysis
def map_quality(model: nn.Module | LoadedModel, data: DataLike, *, maps: SaliencyResult,
                masks: np.ndarray | None = None, steps: int = 32, source: int = 0) -> MapQualityResult:
    """Localisation (with ``masks``, (images, H, W) booleans) and faithfulness of ``maps`` (one
    per image of ``data``, in the same order; ``source`` picks among a rollout's sources)."""
    loaded = as_loaded(model)
    batches = as_batches(data)
    images = batches.images()
    if maps.maps.shape[0] != len(images):
        raise UserError(f"{maps.maps.shape[0]} maps for {len(images)} images")
    if steps < 1:
        raise UserError(f"steps must be at least 1, got {steps}")
    size = spatial_size(images)
    saliency = torch.from_numpy(maps.upsampled(size)[:, source].astype(np.float64))
    localisation: tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None] = (None, None, None)
    if masks is not None:
        masks = np.asarray(masks, dtype=bool)
        if masks.shape != (len(images), *size):
            raise UserError(f"masks of shape {masks.shape} for {len(images)} images of {size}")
        localisation = (maps.mass_fraction(masks, source), _pointing(saliency, masks),
                        masks.mean(axis=(1, 2)))
    mean, std = loaded.normalisation(images.dtype)
    black = ((0 - mean) / std).expand_as(images)
    device = module_device(loaded.module)
    order = _order(saliency)
    pixels = order.shape[1]
    counts = [round(pixels * i / steps) for i in range(steps + 1)]
    chefer = [int(pixels * f) for f in PERTURBATION_FRACTIONS]
    chunk = len(batches[0][0])  # the data's batch size
    with eval_mode(loaded.module), torch.inference_mode():
        def run(batch: torch.Tensor) -> torch.Tensor:
            parts = [(part,) for part in batch.split(chunk)]
            return torch.cat(distributed.map_batches(
                lambda part, index, offset: logits(loaded.module(part[0].to(device))).float().cpu(), parts))

        clean = run(images)
        targets = torch.as_tensor(maps.targets, dtype=torch.long)
        targets = torch.where(targets >= 0, targets, clean.argmax(-1))
        blurred = gaussian_blur(images, [BLUR_KERNEL, BLUR_KERNEL], [BLUR_SIGMA, BLUR_SIGMA])

        def probability(batch: torch.Tensor) -> np.ndarray:
            return run(batch).softmax(-1).gather(1, targets[:, None])[:, 0].numpy()

        def correct(batch: torch.Tensor) -> np.ndarray:
            return (run(batch).argmax(-1) == targets).float().numpy()

        deletion = np.stack([probability(_replace(images, black, order[:, :k])) for k in counts], 1)
        insertion = np.stack([probability(_replace(blurred, images, order[:, :k])) for k in counts], 1)
        positive = np.stack([correct(_replace(images, black, order[:, :k])) for k in chefer], 1)
        negative = np.stack([correct(_replace(images, black, order.flip(1)[:, :k])) for k in chefer], 1)
    return MapQualityResult(model=loaded.label, images=len(images), method=maps.method,
                            mass_in_mask=localisation[0], pointing_hits=localisation[1],
                            mask_area=localisation[2], fractions=np.array(counts) / pixels,
                            deletion=deletion, insertion=insertion, positive=positive,
                            negative=negative, options={"maps": maps.method, "masks": masks is not None})


def _pointing(saliency: torch.Tensor, masks: np.ndarray) -> np.ndarray:
    """Whether each map's maximum (the first, in pixel order) lies inside its mask."""
    peak = saliency.flatten(1).argmax(1).numpy()
    return masks.reshape(len(masks), -1)[np.arange(len(masks)), peak]
