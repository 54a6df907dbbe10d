"""``SaliencyResult``: the result shared by rollout, gradient rollout and captum attributions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from vitprobe.data.batches import spatial_size
from vitprobe.result import Result

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass(kw_only=True)
class SaliencyResult(Result):
    """One map per image and source, on the patch grid (rollout) or the input (attributions).

    ``maps`` is (images, len(sources), rows, cols); ``sources`` names what each map is read
    from (``"cls"``, ``"dist"`` for rollout; ``"input"`` for attributions); ``targets`` the
    class explained per image (-1 where the method has none); ``input_size`` (H, W) of the
    images.
    """

    method: str
    maps: np.ndarray
    sources: list[str]
    input_size: tuple[int, int]
    targets: np.ndarray

    INDEX: ClassVar[tuple[str, ...]] = ("metric", "source", "target_layer")  # Grad-CAM's layer

    @property
    def title(self) -> str:
        """The method, and the layer where it has one (Grad-CAM's)."""
        layer = self.options.get("layer")
        return f"{self.method} ({layer})" if layer else self.method

    def upsampled(self, size: tuple[int, int] | None = None) -> np.ndarray:
        """The maps bilinearly resized to ``size`` (default the input size):
        (images, sources, H, W)."""
        size = size or self.input_size
        if spatial_size(self.maps) == tuple(size):
            return self.maps
        grid = torch.from_numpy(self.maps.astype(np.float32))
        return F.interpolate(grid, size=size, mode="bilinear", align_corners=False).numpy()

    def mass_fraction(self, masks: np.ndarray, source: int = 0) -> np.ndarray:
        """Per image, the fraction of the (non-negative) map mass inside ``masks`` (images, H, W),
        the map being resized to the mask size first (NaN for an all-zero map)."""
        maps = np.clip(self.upsampled(spatial_size(masks))[:, source], 0, None)
        total = maps.sum(axis=(1, 2))
        inside = (maps * masks).sum(axis=(1, 2))
        return np.divide(inside, total, out=np.full_like(total, np.nan), where=total > 0)

    def rows(self) -> list[dict]:
        """Per source, over images (mean): the normalised entropy of the map (1 = uniform
        over the grid) and the fraction of mass on the most salient tenth of positions."""
        flat = np.clip(self.maps.astype(np.float64), 0, None).reshape(*self.maps.shape[:2], -1)
        total = flat.sum(-1, keepdims=True)
        p = np.divide(flat, total, out=np.zeros_like(flat), where=total > 0)
        size = p.shape[-1]
        entropy = -(p * np.log(np.clip(p, 1e-300, None))).sum(-1) / np.log(size)
        top = max(1, size // 10)
        top_mass = np.sort(p, axis=-1)[..., -top:].sum(-1)
        rows = []
        layer = {"target_layer": self.options["layer"]} if self.options.get("layer") else {}
        for j, source in enumerate(self.sources):
            for metric, values in (("map_entropy", entropy), ("top10_mass", top_mass)):
                rows.append({"metric": f"{self.method}_{metric}", "source": source, **layer,
                             "value": float(values[:, j].mean())})
        return rows

    def plot(self, images: np.ndarray | None = None) -> Figure:
        """The maps overlaid on ``images`` ((n, 3, H, W) in [0, 1], as ``vitprobe attention``
        shows them; default: a grey canvas), first four images."""
        from vitprobe.attention.figures import overlay_figure

        canvas = images if images is not None else np.full((len(self.maps), 3, *self.input_size), 0.5)
        return overlay_figure(canvas, [self])
