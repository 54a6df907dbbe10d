"""Gradient-weighted attention rollout (Chefer, Gur & Wolf, ICCV 2021, "Generic Attention-model
Explainability for Interpreting Bi-Modal and Encoder-Decoder Transformers", rules 5 and 6 for
self-attention): R = I; for every layer in forward order R <- R + mean_h((∇A ⊙ A)^+) R, with
∇A the gradient of the chosen class logit with respect to that layer's attention, as the
authors' ViT notebook (``generate_relevance`` in Transformer-MM-Explainability) computes it
over all layers. ``start_layer`` (default 0: all layers, the notebook) is the argument of the
same authors' earlier Transformer-Explainability code (Chefer, Gur & Wolf, CVPR 2021), which
leaves the first layers out. Gradients are paired with attentions by layer index, never by the
order in which hooks fire.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from vitprobe import distributed
from vitprobe.attention.capture import AttentionCapture, attention_gradients, select
from vitprobe.attention.inputs import ImagesLike, Target, on_device, prepared, resolve_targets
from vitprobe.attention.maps import SaliencyResult
from vitprobe.attention.rollout import token_maps
from vitprobe.data.batches import Batch, spatial_size
from vitprobe.models.loaded import LoadedModel
from vitprobe.models.outputs import logits as output_logits
from vitprobe.result import analysis


def gradient_rollout_matrix(attentions: Sequence[torch.Tensor], gradients: Sequence[torch.Tensor],
                            start_layer: int = 0) -> torch.Tensor:
    """R of Chefer et al. from per-layer (B, heads, N, N) attentions and their gradients
    (same order, first layer first): (B, N, N)."""
    batch, _, n, _ = attentions[0].shape
    eye = torch.eye(n, dtype=attentions[0].dtype, device=attentions[0].device)
    relevance = eye.expand(batch, n, n).clone()
    for layer, (attention, gradient) in enumerate(zip(attentions, gradients, strict=True)):
        if layer < start_layer:
            continue
        weighted = (gradient * attention).clamp(min=0).mean(dim=1)
        relevance = relevance + weighted @ relevance
    return relevance


@analysis
def gradient_rollout(model: nn.Module | LoadedModel, data: ImagesLike, *, target: Target = None,
                     start_layer: int = 0, source: str = "cls") -> SaliencyResult:
    """Gradient-weighted rollout maps (Chefer et al. 2021) for every image.

    ``target`` picks the class explained: ``None`` the model's prediction (default),
    ``"label"`` the data's labels, an int, or a tensor with one class per image. ``source``
    is ``"cls"``, ``"dist"`` or ``"both"``. Maps are (images, sources, rows, cols).
    """
    loaded, batches = prepared(model, data)
    amodel = loaded.attention
    start = select([start_layer], amodel.num_layers, "layer")[0]
    input_size = spatial_size(batches[0][0])
    sources = amodel.layout(input_size).sources(source)

    def relevance_maps(batch: Batch, index: int, offset: int) -> tuple[torch.Tensor, np.ndarray]:
        images, labels = on_device(loaded, batch)
        attentions: dict[int, torch.Tensor] = {}
        capture = AttentionCapture(amodel, attentions.__setitem__, keep_for_gradients=True)
        with torch.enable_grad():
            recording = capture.run(images)
            logits = output_logits(recording.output)
            chosen = resolve_targets(target, labels, logits, offset)
            objective = logits.gather(1, chosen[:, None]).sum()
            gradients = attention_gradients(recording, objective)
        layers = range(amodel.num_layers)
        relevance = gradient_rollout_matrix([attentions[i] for i in layers],
                                            [gradients[i].detach() for i in layers], start)
        tokens = [recording.layout.source_index(name) for name in sources]
        return token_maps(relevance[:, tokens], recording.layout).float().cpu(), chosen.cpu().numpy()

    maps, targets = zip(*distributed.map_batches(relevance_maps, batches))
    return SaliencyResult(model=loaded.label, images=batches.num_images, method="grad_rollout",
                          maps=torch.cat(maps).numpy(), sources=sources, input_size=input_size,
                          targets=np.concatenate(targets), options={"start_layer": start})
