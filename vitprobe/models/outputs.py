"""The class scores inside whatever a classifier's forward pass returns.

One rule for every analysis: a (batch, classes) tensor is the logits; a transformers
``ModelOutput`` (or any object or mapping with ``logits``) gives its ``logits``; a tuple or list
of equally shaped tensors is DeiT's (class head, distillation head) pair, averaged as DeiT does
at inference (Touvron et al. 2021; timm's ``VisionTransformerDistilled`` already returns the
average in eval mode).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from vitprobe.errors import UserError


def logits(output: object) -> torch.Tensor:
    """The (batch, classes) logits of a forward output; a UserError when there are none."""
    if isinstance(output, Mapping) and "logits" in output:
        output = output["logits"]
    elif not isinstance(output, (torch.Tensor, tuple, list)) and hasattr(output, "logits"):
        output = output.logits
    if isinstance(output, (tuple, list)) and output and all(
            isinstance(o, torch.Tensor) and o.shape == output[0].shape for o in output):
        output = torch.stack(list(output)).mean(0)
    if not isinstance(output, torch.Tensor) or output.dim() != 2:
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise UserError(f"the model returns {shape}, not (batch, classes) logits: "
                        "a classification head is needed")
    return output


def check_labels(scores: torch.Tensor, labels: torch.Tensor) -> None:
    """Class labels must index the model's classes; a UserError naming both otherwise."""
    if labels.numel() and not labels.is_floating_point() and (
            int(labels.min()) < 0 or int(labels.max()) >= scores.shape[-1]):
        raise UserError(f"the labels range over [{int(labels.min())}, {int(labels.max())}] but the "
                        f"model has {scores.shape[-1]} classes: data and model do not match")
