"""Every map method by name: the attention methods of a ViT and captum's attributions."""

from __future__ import annotations

import numpy as np

from vitprobe.attention.attributions import ATTRIBUTION_METHODS, attributions
from vitprobe.attention.capture import attention_maps
from vitprobe.attention.gradient_rollout import gradient_rollout
from vitprobe.attention.maps import SaliencyResult
from vitprobe.attention.rollout import attention_rollout
from vitprobe.data.batches import Batches, spatial_size
from vitprobe.errors import UserError
from vitprobe.models.loaded import LoadedModel

ATTENTION_METHODS = ("rollout", "grad-rollout", "raw")
METHODS = ATTENTION_METHODS + ATTRIBUTION_METHODS


def attention_readable(model: LoadedModel) -> UserError | None:
    """Why ``model``'s attention cannot be read (a UserError naming the module), or None."""
    try:
        model.attention  # noqa: B018 (reading it finds and checks the attention sites)
    except UserError as error:
        return error
    return None


def explain(model: LoadedModel, data: Batches, method: str, *, head_fusion: str = "mean",
            discard: float = 0.0, start_layer: int = 0, source: str = "cls") -> SaliencyResult:
    """The maps of ``method`` for the images of ``data``: ``rollout`` (Abnar & Zuidema 2020),
    ``grad-rollout`` (Chefer et al. 2021), ``raw`` (the ``source`` token's attention in the last
    layer, heads averaged), or a captum attribution (``gradcam``, ``saliency``, ``captum-ig``)."""
    if method == "rollout":
        return attention_rollout(model, data, head_fusion=head_fusion, discard_ratio=discard,
                                 start_layer=start_layer, source=source)
    if method == "grad-rollout":
        return gradient_rollout(model, data, start_layer=start_layer, source=source)
    if method == "raw":
        maps = attention_maps(model, data, layers=[-1])
        token, layer = ("cls" if source == "both" else source), maps.layers[0]
        mean = np.mean([maps.query_map(layer, head, token) for head in maps.heads], axis=0)
        return SaliencyResult(model=model.label, images=len(mean), method="raw_attention",
                              maps=mean[:, None], sources=[token], input_size=spatial_size(data[0][0]),
                              targets=np.full(len(mean), -1), options={"layer": layer})
    if method in ATTRIBUTION_METHODS:
        return attributions(model, data, method=method)
    raise UserError(f"unknown map method {method!r}; choose from {', '.join(METHODS)}")
