"""Input attributions through captum for ViTs and CNNs alike, at the input's resolution.

- ``integrated_gradients``: Sundararajan, Taly & Yan 2017 (captum ``IntegratedGradients``),
  baseline the all-zero normalised image (the dataset mean), map = sum over channels of |attr|.
- ``saliency``: Simonyan, Vedaldi & Zisserman 2014 (captum ``Saliency``), map = max over
  channels of |d logit / d input|.
- ``gradcam``: Selvaraju et al. 2017 (captum ``LayerGradCam``, ReLU'd) on the last stage,
  bilinearly upsampled to the input. For a CNN the last stage is the last of the model's
  feature stages (:mod:`vitprobe.models.stages`) with at least 2x2 positions at the input size
  (``layer4`` of a ResNet at 224 px, ``layer3`` at 32 px, ``features`` of a MobileNet) or the
  ``layer`` given. A ViT's last stage
  is the token sequence entering its last block: the patch tokens are laid out as a
  (B, C, rows, cols) grid by an identity module (:class:`TokenGrid`) so that captum sees the
  layout Grad-CAM assumes; the values passed on are unchanged. (The last block's *output*
  patch tokens cannot be used for a class-token ViT: nothing downstream reads them.)
"""

from __future__ import annotations

import numpy as np
import torch
from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam, Saliency
from torch import nn

from vitprobe import distributed
from vitprobe.attention.inputs import ImagesLike, Target, on_device, prepared, resolve_targets
from vitprobe.attention.maps import SaliencyResult
from vitprobe.data.batches import Batch, spatial_size
from vitprobe.errors import UserError
from vitprobe.models.attention_sites import mha_math_path
from vitprobe.models.loaded import LoadedModel
from vitprobe.result import analysis

ATTRIBUTION_METHODS = ("captum-ig", "saliency", "gradcam")


class TokenGrid(nn.Module):
    """The identity on a (B, C, rows, cols) view of patch tokens: the layer Grad-CAM hooks."""

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        return grid


class ViTLastStage:
    """Logits of a ViT whose last block receives its patch tokens through :class:`TokenGrid`."""

    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded
        self.amodel = loaded.attention
        self.grid = TokenGrid()

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        layout = self.amodel.layout(spatial_size(images))
        p = layout.num_prefix_tokens
        sequence_first = self.amodel.sequence_first

        def through_grid(module, inputs):
            tokens = inputs[0].transpose(0, 1) if sequence_first else inputs[0]
            layout.check(tokens.shape[1])
            batch, _, channels = tokens.shape
            grid = tokens[:, p:].transpose(1, 2).reshape(batch, channels, *layout.grid)
            grid = self.grid(grid)
            tokens = torch.cat([tokens[:, :p], grid.flatten(2).transpose(1, 2)], dim=1)
            return (tokens.transpose(0, 1) if sequence_first else tokens, *inputs[1:])

        handle = self.amodel.blocks[-1].register_forward_pre_hook(through_grid)
        try:
            with mha_math_path():
                return self.loaded.logits(self.amodel.module(images))
        finally:
            handle.remove()


def cnn_last_stage(loaded: LoadedModel, layer: nn.Module | str | None,
                   input_size: tuple[int, int]) -> tuple[nn.Module, str]:
    """The layer Grad-CAM uses for a CNN and its name: ``layer`` (a module or its name), else
    the last feature stage that still has at least 2x2 positions for an input of
    ``input_size`` (a 32-pixel input leaves a stride-32 ResNet's last stage at 1x1, where a
    Grad-CAM map is a constant)."""
    if isinstance(layer, nn.Module):
        return layer, type(layer).__name__
    if layer is None:
        stages = loaded.stages(input_size)
        if not stages:
            raise UserError(f"{loaded.label}: no feature maps found for Grad-CAM; name a layer")
        layer = ([s for s in stages if min(s.grid) >= 2] or stages)[-1].name
    return loaded.resolve_layer(layer), layer


def _gradcam(forward, vit_stage: ViTLastStage | None, loaded: LoadedModel, layer, images: torch.Tensor,
             target: torch.Tensor) -> tuple[torch.Tensor, str]:
    """ReLU'd Grad-CAM upsampled to the input, and the name of the layer it used."""
    if vit_stage is not None:
        explainer, name = LayerGradCam(vit_stage, vit_stage.grid), "last block input (patch grid)"
    else:
        stage, name = cnn_last_stage(loaded, layer, spatial_size(images))
        explainer = LayerGradCam(forward, stage)
    attr = explainer.attribute(images, target=target, relu_attributions=True)
    return LayerAttribution.interpolate(attr, spatial_size(images), "bilinear"), name


@analysis
def attributions(model: nn.Module | LoadedModel, data: ImagesLike, *, method: str = "gradcam",
                 target: Target = None, integration_steps: int = 32,
                 layer: nn.Module | str | None = None) -> SaliencyResult:
    """captum attribution maps (images, 1, H, W) at the input resolution, for any classifier.

    ``method`` is ``"captum-ig"`` (Integrated Gradients, ``integration_steps`` steps), ``"saliency"`` or
    ``"gradcam"`` (last stage; a ViT's patch tokens reshaped to its grid; ``layer`` overrides a
    CNN's stage). ``target``: ``None`` the prediction, ``"label"``, an int or a tensor.
    """
    if method not in ATTRIBUTION_METHODS:
        raise UserError(f"unknown attribution method {method!r}; choose from {', '.join(ATTRIBUTION_METHODS)}")
    loaded, batches = prepared(model, data)
    module = loaded.module
    vit_stage = ViTLastStage(loaded) if method == "gradcam" and loaded.family == "vit" else None

    def forward(images: torch.Tensor) -> torch.Tensor:
        with mha_math_path():
            return loaded.logits(module(images))

    input_size = spatial_size(batches[0][0])

    def attributed(batch: Batch, index: int, offset: int) -> tuple[torch.Tensor, np.ndarray, dict]:
        images, labels = on_device(loaded, batch)
        chosen_layer = {}
        with torch.no_grad():
            chosen = resolve_targets(target, labels, forward(images), offset)
        if method != "gradcam":
            images = images.clone().requires_grad_(True)
        if method == "captum-ig":
            attr = IntegratedGradients(forward).attribute(
                images, target=chosen, baselines=0.0, n_steps=integration_steps,
                internal_batch_size=len(images)).abs().sum(1, keepdim=True)
        elif method == "saliency":
            attr = Saliency(forward).attribute(images, target=chosen, abs=True).amax(1, keepdim=True)
        else:
            attr, chosen_layer["layer"] = _gradcam(forward, vit_stage, loaded, layer, images, chosen)
        return attr.detach().float().cpu(), chosen.cpu().numpy(), chosen_layer

    maps, targets, layers = zip(*distributed.map_batches(attributed, batches))
    return SaliencyResult(model=loaded.label, images=batches.num_images, method=method.replace("-", "_"),
                          maps=torch.cat(maps).numpy(), sources=["input"], input_size=input_size,
                          targets=np.concatenate(targets), options=layers[0])
