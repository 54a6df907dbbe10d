"""The frequency of features: relative log amplitudes of each layer's Fourier-transformed feature
maps (Park & Kim 2022, "How Do Vision Transformers Work?", Fig. 2a; their ``fourier_analysis``
notebook in xxxnell/how-do-vits-work).

For a layer's maps ``x`` (B, C, H, W; a ViT's patch tokens on their grid, prefix tokens
dropped): ``log(|fft2(x)| + 1e-6)``, rolled by (H/2, W/2) so that frequency 0 sits at the
centre, averaged over images and channels; then the half diagonal from the centre (``H/2``
values, frequency ``j / H`` cycles per token along both axes, j = 0 .. H/2 - 1) minus its value
at frequency 0. The last value, at ``(H/2 - 1) / H`` cycles (``pi (1 - 2/H)`` in radians, which
the paper's figure labels ``pi``), is the *high-frequency log amplitude* of Fig. 2b: MSAs
(low-pass) lower it, convolutions (high-pass) raise it.

Departs from the notebook only in averaging over every image of ``data`` in batches (the
notebook averages one batch) and in refusing non-square maps, whose diagonal is not a
frequency axis.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch
from torch import nn

from vitprobe import distributed
from vitprobe.data.batches import Batch, DataLike, as_batches, spatial_size
from vitprobe.errors import UserError
from vitprobe.features.taps import spatial, taps
from vitprobe.models.loaded import LoadedModel, as_loaded, feature_layers
from vitprobe.models.module_state import eval_mode, module_device
from vitprobe.result import Result, analysis

if TYPE_CHECKING:
    from matplotlib.figure import Figure

EPSILON = 1e-6  # added to the amplitude before the log, as the notebook


def log_amplitude(maps: torch.Tensor) -> torch.Tensor:
    """``log(|fft2| + 1e-6)`` of (B, C, H, W) maps, zero frequency rolled to (H/2, W/2)."""
    h, w = maps.shape[-2:]
    amplitude = torch.fft.fft2(maps.double()).abs() + EPSILON
    return torch.roll(amplitude.log(), shifts=(h // 2, w // 2), dims=(-2, -1))


def relative_log_amplitude(mean_log_amplitude: torch.Tensor) -> torch.Tensor:
    """The half diagonal of a rolled (H, H) mean log amplitude, relative to frequency 0."""
    h = mean_log_amplitude.shape[-1]
    half = torch.diagonal(mean_log_amplitude)[h // 2:]
    return half - half[0]


@dataclass(kw_only=True)
class FrequencyResult(Result):
    """``amplitudes[i]`` is layer ``layers[i]``'s relative log amplitude at the frequencies
    ``frequencies[i]`` (fractions of pi, 0 .. 1 - 2/H); ``high[i]`` is its last value."""

    layers: list[str]
    grids: list[tuple[int, int]]
    frequencies: list[np.ndarray]
    amplitudes: list[np.ndarray]

    INDEX: ClassVar[tuple[str, ...]] = ("metric", "layer", "frequency")
    ANNOTATIONS: ClassVar[tuple[str, ...]] = ("depth", "grid")
    REPORTED: ClassVar[tuple[str, ...]] = ("high_frequency_log_amplitude",)
    LABELS: ClassVar[dict[str, str]] = {"high_frequency_log_amplitude": "hf_log_amplitude[{layer}]"}

    @property
    def high(self) -> np.ndarray:
        return np.array([a[-1] for a in self.amplitudes])

    def rows(self) -> list[dict]:
        rows = []
        for depth, (layer, grid, frequencies, amplitudes) in enumerate(
                zip(self.layers, self.grids, self.frequencies, self.amplitudes)):
            extra = {"layer": layer, "depth": depth, "grid": f"{grid[0]}x{grid[1]}"}
            rows += [{"metric": "relative_log_amplitude", "frequency": float(f), "value": float(a),
                      **extra} for f, a in zip(frequencies, amplitudes)]
            rows.append({"metric": "high_frequency_log_amplitude", "frequency": float(frequencies[-1]),
                         "value": float(amplitudes[-1]), **extra})
        return rows

    def plot(self) -> Figure:
        """Relative log amplitude against frequency and depth."""
        from vitprobe.features.figures import frequency_figure

        return frequency_figure([self])

@analysis
def feature_frequency(model: nn.Module | LoadedModel, data: DataLike, *,
                      layers: list[str] | None = None) -> FrequencyResult:
    """Relative log amplitudes of the Fourier-transformed feature maps of ``layers`` (default:
    every block of a ViT, every feature stage of a CNN), averaged over the images of ``data``."""
    loaded = as_loaded(model)
    batches = as_batches(data)
    size = spatial_size(batches[0][0])
    names = list(layers) if layers else feature_layers(loaded, size, "the frequency analysis")
    sums: dict[str, torch.Tensor] = {}
    counts = dict.fromkeys(names, 0)
    with eval_mode(loaded.module), taps(loaded, names) as outputs:
        def amplitude_sums(batch: Batch, index: int, offset: int) -> dict[str, tuple[torch.Tensor, int]]:
            """Per layer: the summed log amplitude of the batch's maps, and how many maps."""
            with torch.inference_mode():
                loaded.module(batch[0].to(module_device(loaded.module)))
            summed = {}
            for name in names:
                maps = spatial(loaded, outputs[name], size, name)
                if maps.shape[-1] != maps.shape[-2] or maps.shape[-1] < 2:
                    raise UserError(f"layer {name!r} of {loaded.label} has {maps.shape[-2]}x"
                                    f"{maps.shape[-1]} maps: the frequency analysis needs square "
                                    "maps of at least 2x2")
                summed[name] = (log_amplitude(maps).sum(dim=(0, 1)).cpu(), maps.shape[0] * maps.shape[1])
            return summed

        for summed in distributed.map_batches(amplitude_sums, batches):
            for name, (total, count) in summed.items():
                sums[name] = total if name not in sums else sums[name] + total
                counts[name] += count
    amplitudes = [relative_log_amplitude(sums[n] / counts[n]).numpy() for n in names]
    grids = [spatial_size(sums[n]) for n in names]
    frequencies = [np.arange(len(a)) / (g[0] / 2) for a, g in zip(amplitudes, grids)]
    return FrequencyResult(model=loaded.label, images=batches.num_images, layers=names, grids=grids,
                           frequencies=frequencies, amplitudes=amplitudes)
