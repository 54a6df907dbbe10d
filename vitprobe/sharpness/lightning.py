"""``SharpnessCallback``: a :class:`~vitprobe.sharpness.tracker.SharpnessTracker` in a PyTorch
Lightning ``Trainer`` (needs the ``lightning`` package).

After each optimizer step that is due (``trainer.global_step`` a multiple of the tracker's
``every``, once per step, so gradient accumulation does not measure twice), the tracker measures
lambda_1 of ``pl_module``'s loss on ``batch`` (default: the training batch of that step, which
must be ``(images, labels)``; give a fixed batch for a curve of the weights alone) with the first
optimizer's learning rate. ``pl_module(images)`` must return the logits.
"""

from __future__ import annotations

from typing import Any

from vitprobe.data.batches import DataLike
from vitprobe.errors import UserError
from vitprobe.sharpness.tracker import SharpnessTracker

try:
    from lightning.pytorch import Callback
except ImportError as error:
    raise UserError("SharpnessCallback needs PyTorch Lightning 2 (the lightning package): "
                    "pip install lightning") from error


class SharpnessCallback(Callback):
    """Calls ``tracker`` after every due training step; ``tracker.result()`` holds the curve."""

    def __init__(self, tracker: SharpnessTracker, batch: DataLike | None = None) -> None:
        super().__init__()
        self.tracker, self.batch = tracker, batch

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = int(trainer.global_step)
        if not self.tracker.due(step):
            return
        lr = float(trainer.optimizers[0].param_groups[0]["lr"]) if trainer.optimizers else None
        self.tracker(step, pl_module, self.batch if self.batch is not None else tuple(batch), lr=lr)
