"""The leading Hessian eigenvalue of every block: how heterogeneous the curvature is across depth,
as Zhang, Chen, Li, Ding, Sun & Luo 2024 ("Why Transformers Need Adam: A Hessian Perspective")
measure it.

Each block's Hessian is the diagonal block of the full Hessian that belongs to that block's
parameters (the loss differentiated twice with respect to them, every other parameter held
fixed); one Lanczos run per block gives its largest eigenvalue. Blocks default to the transformer
blocks of a ViT and the feature stages of a CNN (``layer1`` ... of a ResNet) that have trainable
parameters, so the stem and the classifier head are not reported. Zhang et al. split finer, one block per weight matrix; give
``blocks`` (module names) to do the same.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np
from torch import nn

from vitprobe.data.batches import DataLike, as_batches, spatial_size
from vitprobe.errors import UserError
from vitprobe.models.loaded import LoadedModel, as_loaded, default_layers
from vitprobe.result import Result, analysis
from vitprobe.sharpness.loss import LossFn
from vitprobe.sharpness.operator import HessianOperator
from vitprobe.sharpness.spectrum import spectrum_of

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass(kw_only=True)
class BlockSpectrumResult(Result):
    """``eigenvalues[i]`` is the largest eigenvalue of block ``blocks[i]``'s Hessian, with its
    residual ||Hv - lambda v|| / |lambda|, the products it took and the block's parameter count."""

    blocks: list[str]
    eigenvalues: np.ndarray
    residuals: np.ndarray
    hvps: list[int]
    block_parameters: list[int]

    INDEX: ClassVar[tuple[str, ...]] = ("metric", "block")
    ANNOTATIONS: ClassVar[tuple[str, ...]] = ("depth", "parameters", "residual", "hvps")
    LABELS: ClassVar[dict[str, str]] = {"block_lambda_1": "lambda_1[{block}]"}

    def rows(self) -> list[dict]:
        return [{"metric": "block_lambda_1", "block": block, "value": float(value), "depth": depth,
                 "parameters": size, "residual": float(residual), "hvps": hvps}
                for depth, (block, value, residual, hvps, size) in enumerate(
                    zip(self.blocks, self.eigenvalues, self.residuals, self.hvps, self.block_parameters))]

    def plot(self) -> Figure:
        """Lambda_1 of each block against depth."""
        from vitprobe.sharpness.figures import block_figure

        return block_figure([self])

def _trainable(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())


def _inside(block: str) -> Callable[[str, nn.Parameter], bool]:
    """The parameter filter of ``block``'s own parameters."""
    prefix = f"{block}."
    return lambda name, _: name.startswith(prefix)


@analysis
def block_spectrum(model: nn.Module | LoadedModel, data: DataLike, *, blocks: list[str] | None = None,
                   tol: float = 1e-3, max_iter: int = 100, loss_fn: LossFn | None = None,
                   seed: int = 0) -> BlockSpectrumResult:
    """The largest eigenvalue of the Hessian of the mean loss restricted to each block's
    parameters (one Lanczos run per block, stopping on the residual as :func:`hessian_spectrum`)."""
    loaded = as_loaded(model)
    batches = as_batches(data)
    if blocks:
        names = list(blocks)
        for block in names:
            if not _trainable(loaded.resolve_layer(block)):  # resolve: a UserError for a bad name
                raise UserError(f"block {block!r} of {loaded.label} has no trainable parameter")
    else:  # stages without parameters (a pooling stage) have no Hessian block
        names = [name for name in default_layers(loaded, spatial_size(batches[0][0]))
                 if _trainable(loaded.resolve_layer(name))]
        if not names:
            raise UserError(f"no block or stage of {loaded.label} has parameters of its own (its stages "
                            "are modules such as activations or pooling): name the blocks")
    values, residuals, hvps, sizes = [], [], [], []
    for block in names:
        operator = HessianOperator(loaded, batches, loss_fn=loss_fn, params=_inside(block))
        spectrum = spectrum_of(operator, k=1, tol=tol, max_iter=max_iter, seed=seed)
        operator.release()
        values.append(spectrum.eigenvalues[0])
        residuals.append(spectrum.residuals[0])
        hvps.append(int(spectrum.total_hvps))
        sizes.append(operator.size)
    return BlockSpectrumResult(model=loaded.label, images=batches.num_images, blocks=names,
                               eigenvalues=np.array(values), residuals=np.array(residuals),
                               hvps=hvps, block_parameters=sizes)
