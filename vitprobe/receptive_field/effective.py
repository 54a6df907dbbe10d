"""Effective receptive field (Luo et al. 2016) with the protocol of RepLKNet's ``visualize_erf.py``.

Ding et al. 2022 ("Scaling Up Your Kernels to 31x31", RepLKNet), per image, in eval mode:

1. objective = the chosen layer's output at its centre position, ReLU'd per channel and summed
   over channels: ``relu(out[:, :, H // 2, W // 2]).sum()`` (``objective_relu=False`` drops the
   ReLU). For a ViT the centre position is the patch token at grid row ``rows // 2`` and column
   ``cols // 2`` (after the ``num_prefix_tokens`` prefix tokens; for an even grid it is the
   lower-right of the four middle patches, matching ``H // 2`` of a feature map);
2. its gradient with respect to the input image (captum's ``NeuronGradient``);
3. ``relu`` (the script) or ``abs`` of the gradient, element-wise, then summed over the input
   channels (the script applies the ReLU before the channel sum);
4. averaged over the images (images whose map is not finite are skipped, as in the script);
5. displayed as ``log10(x + 1)`` (the script) or ``x ** exponent``, divided by the maximum.

The script resizes 50 ImageNet images to 1024x1024; here the maps have the size of the images
given (the command renders them at ``--input-size`` and uses 50 images by default).

The scores of :mod:`vitprobe.receptive_field.scores` are read off the scaled map by default,
as ``analyze_erf.py`` does; note that ``log10(x + 1)`` is nearly linear for small gradients
and logarithmic for large ones, so scaled scores depend on the gradients' magnitude
(``score_on="raw"`` avoids that).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from captum.attr import NeuronGradient
from torch import nn

from vitprobe import distributed
from vitprobe.data.batches import Batches, DataLike, as_batches, spatial_size
from vitprobe.errors import UserError
from vitprobe.models.loaded import LoadedModel, as_loaded, default_layers, layer_name
from vitprobe.models.module_state import eval_mode, module_device
from vitprobe.progress import log, progress
from vitprobe.receptive_field.result import ReceptiveFieldResult
from vitprobe.receptive_field.scores import DEFAULT_THRESHOLDS
from vitprobe.receptive_field.theoretical import TheoreticalField, layer_fields
from vitprobe.result import analysis

GRADIENT_RULES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": torch.relu, "abs": torch.abs,
}
SCALES = ("log", "power")
SCORE_ON = ("scaled", "raw")
CENTRES = ("field", "map")


class CentreObjective:
    """captum neuron selector: the centre unit of a layer's output, summed over channels.

    Accepts a feature map (B, C, H, W) or a token sequence (B, T, C) whose T tokens are the
    ``num_prefix_tokens`` prefix tokens (if present) followed by the ``grid`` patches in
    row-major order. Records the centre unit and the output grid it saw.
    """

    def __init__(self, relu: bool, grid: tuple[int, int] | None = None,
                 num_prefix_tokens: int = 0, sequence_first: bool = False,
                 where: str = "the layer") -> None:
        self.relu = relu
        self.where = where
        self.sequence_first = sequence_first
        self.grid = grid
        self.num_prefix_tokens = num_prefix_tokens
        self.unit: tuple[int, int] | None = None
        self.output_grid: tuple[int, int] | None = None

    def __call__(self, output: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor:
        if isinstance(output, (tuple, list)):
            output = output[0]
        if self.sequence_first and output.dim() == 3:
            output = output.transpose(0, 1)
        if output.dim() == 4:
            rows, cols = int(output.shape[2]), int(output.shape[3])
            values = output[:, :, rows // 2, cols // 2]
        elif output.dim() == 3 and self.grid is not None:
            rows, cols = self.grid
            tokens = int(output.shape[1])
            if tokens == rows * cols + self.num_prefix_tokens:
                prefix = self.num_prefix_tokens
            elif tokens == rows * cols:
                prefix = 0  # the patch embedding: patches only
            else:
                raise UserError(f"{self.where} returned {tokens} tokens, but the model's layout is "
                                f"{self.num_prefix_tokens} prefix tokens + a {rows}x{cols} grid")
            values = output[:, prefix + (rows // 2) * cols + cols // 2, :]
        else:
            raise UserError(f"{self.where} outputs shape {tuple(output.shape)}: neither a "
                            "(B, C, H, W) feature map nor (B, tokens, C) patch tokens")
        self.unit, self.output_grid = (rows // 2, cols // 2), (rows, cols)
        if self.relu:
            values = torch.relu(values)
        return values.sum(dim=1)


def at_input_size(loaded: LoadedModel, size: tuple[int, int]) -> LoadedModel:
    """The model ready for ``size`` inputs. A timm ViT built for another size is copied and its
    position embedding resampled (timm's ``set_input_size``); the caller's model is untouched."""
    module = loaded.module
    if loaded.family != "vit" or tuple(size) == tuple(loaded.input_size) or getattr(
            module, "dynamic_img_size", False):
        return loaded
    if not hasattr(module, "set_input_size"):
        raise UserError(f"{loaded.label} is built for {loaded.input_size} inputs and cannot be "
                        f"resized to {tuple(size)}")
    resized: Any = copy.deepcopy(module)  # a timm ViT, which has set_input_size
    resized.set_input_size(img_size=tuple(size))
    channels = loaded.data_config["input_size"][0]
    config = {**loaded.data_config, "input_size": (channels, *size)}
    return dataclasses.replace(loaded, module=resized.eval(), data_config=config)


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise UserError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def scale_map(raw: np.ndarray, scale: str = "log", exponent: float = 0.5) -> np.ndarray:
    """``log10(raw + 1)`` or ``raw ** exponent``, divided by its maximum (all zeros stay zero)."""
    _check_choice("scale", scale, SCALES)
    scaled = np.log10(raw + 1.0) if scale == "log" else np.power(raw, exponent)
    peak = scaled.max()
    return scaled / peak if peak > 0 else scaled


def _accumulate(loaded: LoadedModel, batches: Batches, layer: str, objective: CentreObjective,
                rule: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, int, int]:
    """Sum over this rank's images of the per-image gradient maps; (sum, used, skipped)."""
    module = loaded.module
    device = module_device(module)
    neuron = NeuronGradient(module, loaded.resolve_layer(layer))
    total, used, skipped = None, 0, 0
    for images, _ in progress(distributed.shard(list(batches)), desc=f"ERF {layer or 'output'}"):
        images = images.to(device=device, dtype=torch.float32).detach().requires_grad_(True)
        grads = neuron.attribute(images, neuron_selector=objective)
        maps = rule(grads).sum(dim=1, dtype=torch.float64)
        finite = torch.isfinite(maps).all(dim=2).all(dim=1)
        batch_sum = maps[finite].sum(dim=0)
        total = batch_sum if total is None else total + batch_sum
        used += int(finite.sum())
        skipped += int((~finite).sum())
    if total is None:
        h, w = batches[0][0].shape[-2:]
        total = torch.zeros(h, w, dtype=torch.float64, device=device)
    counts = torch.tensor([used, skipped], dtype=torch.float64, device=device)
    distributed.all_reduce_sum(total)
    distributed.all_reduce_sum(counts)
    return total.cpu(), int(counts[0]), int(counts[1])


def _theoretical(loaded: LoadedModel, layers: list[str]) -> list[TheoreticalField | None]:
    if loaded.family == "vit":
        return [None] * len(layers)
    try:
        fields = layer_fields(loaded)
    except UserError as error:
        log(f"{loaded.label}: no theoretical receptive field ({error})")
        return [None] * len(layers)
    return [fields.get(layer) for layer in layers]


def field_centre(loaded: LoadedModel, unit: tuple[int, int],
                 theory: TheoreticalField | None) -> tuple[float, float] | None:
    """Centre (row, column; input pixel coordinates) of the field of output unit ``unit``: the
    middle of its patch for a ViT, the theoretical field's centre for a CNN layer, else None."""
    if loaded.family == "vit" and loaded.patch_size is not None:
        ph, pw = loaded.patch_size
        return unit[0] * ph + (ph - 1) / 2, unit[1] * pw + (pw - 1) / 2
    if theory is not None and not theory.is_global:
        return theory.centre_of(unit)
    return None


def score_centre(shape: tuple[int, int], centre: tuple[float, float] | None) -> tuple[int, int]:
    """The map pixel nearest ``centre`` (halves round down-right, like ``H // 2``), clipped into
    the map; the map's centre pixel when ``centre`` is None."""
    if centre is None:
        return shape[0] // 2, shape[1] // 2
    row, column = (min(max(math.floor(c + 0.5), 0), n - 1) for c, n in zip(centre, shape))
    return row, column


@analysis
def effective_receptive_field(
    model: nn.Module | LoadedModel,
    data: DataLike,
    *,
    layer: str | Sequence[str] | None = None,
    gradient: str = "relu",
    objective_relu: bool = True,
    scale: str = "log",
    exponent: float = 0.5,
    score_on: str = "scaled",
    centre: str = "field",
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
) -> ReceptiveFieldResult:
    """Effective receptive field of the centre unit of ``layer`` (Luo et al. 2016), measured
    with RepLKNet's protocol (Ding et al. 2022; see the module docstring for every step).

    ``model``: a :class:`LoadedModel` or a plain module (CNN or timm ViT). ``data``: a
    (B, C, H, W) tensor, :class:`Batches`, one ``(images, labels)`` tuple or an iterable of
    them, already preprocessed; the maps have the images' size. A timm ViT built for another
    size is run on a copy with its position embedding resampled. ``layer``: one module name or
    several (default: each ResNet stage, each ViT block; ``""`` is the model's output).
    ``gradient``: ``relu`` (the script) or ``abs``, applied element-wise before the channel sum.
    ``objective_relu``: ReLU on each channel of the centre unit before the sum (the script).
    ``scale``: ``log`` (``log10(x + 1)``) or ``power`` (``x ** exponent``), then / max.
    ``score_on``: ``scaled`` (the script) or ``raw`` map for the scores. ``centre``: the
    scores' centre pixel, ``field`` (the centre of the measured unit's field: the middle of its
    patch for a ViT, of its theoretical field for a CNN; the map's centre when unknown) or
    ``map`` (the map's centre pixel, as the script). The two agree when the input is an even
    multiple of the layer's stride, as in the script's 1024-pixel setting; they differ when a
    deep layer has few units, e.g. the only unit of a 1x1 map is centred on pixel (0, 0) in a
    torchvision-style ResNet.
    Under torchrun the batches are split across ranks and the maps summed.
    """
    _check_choice("gradient", gradient, tuple(GRADIENT_RULES))
    _check_choice("scale", scale, SCALES)
    _check_choice("score_on", score_on, SCORE_ON)
    _check_choice("centre", centre, CENTRES)
    if scale == "power" and not (math.isfinite(exponent) and exponent > 0):
        raise UserError(f"the power scale needs a positive exponent, got {exponent}")
    if not all(0.0 < t < 1.0 for t in thresholds):
        raise UserError(f"mass thresholds lie in (0, 1), got {list(thresholds)}")
    loaded = as_loaded(model)
    batches = as_batches(data)
    size = spatial_size(batches[0][0])
    loaded = at_input_size(loaded, size)
    layers = default_layers(loaded, size) if layer is None else (
        [layer] if isinstance(layer, str) else list(layer))
    sequence_first = loaded.family == "vit" and loaded.attention.sequence_first
    grid = loaded.grid_size(size) if loaded.family == "vit" else None
    raw, units, grids, used, skipped = [], [], [], 0, 0
    with eval_mode(loaded.module):
        for name in layers:
            objective = CentreObjective(objective_relu, grid, loaded.num_prefix_tokens, sequence_first,
                                        where=f"{layer_name(name)} of {loaded.label}")
            total, used, skipped = _accumulate(loaded, batches, name, objective,
                                               GRADIENT_RULES[gradient])
            if used == 0:
                raise UserError("every image gave a non-finite gradient map")
            raw.append((total / used).numpy())
            units.append(objective.unit or (0, 0))
            grids.append(objective.output_grid or (0, 0))
    raw_maps = np.stack(raw)
    theoretical = _theoretical(loaded, layers)
    centres = [score_centre(size, field_centre(loaded, unit, theory) if centre == "field"
                            else None) for unit, theory in zip(units, theoretical)]
    return ReceptiveFieldResult(
        model=loaded.label,
        family=loaded.family,
        input_size=size,
        layers=layers,
        raw=raw_maps,
        scaled=np.stack([scale_map(m, scale, exponent) for m in raw_maps]),
        centre_units=units,
        score_centres=centres,
        output_grids=grids,
        images=used,
        gradient=gradient,
        objective_relu=objective_relu,
        scale=scale,
        exponent=exponent,
        score_on=score_on,
        centre=centre,
        thresholds=tuple(float(t) for t in thresholds),
        theoretical=theoretical,
        num_skipped=skipped,
    )
