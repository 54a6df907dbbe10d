"""``vitprobe track``: lambda_1 while the demo zoo trains, AdamW against SAM (Cohen et al. 2021's
sharpness curve, with their edge-of-stability line 2 / lr).

Each ``--model`` must be a demo model (``demo:vit``, ``demo:vit-sam``, ...): its recipe is trained
again from scratch by the zoo's own deterministic script, over ``--steps`` steps (the recipe's
warm-up and cosine schedule compressed to them), and a :class:`SharpnessTracker` measures
lambda_1 every ``--every`` steps on a fixed set of ``--num-images`` training images. For your own
training loop, call :class:`vitprobe.SharpnessTracker` (or its Lightning callback) instead.

``track.csv``: ``metric = lambda_1`` per ``step``, with ``residual``, ``hvps``, ``lr`` and
``eos_threshold`` (2 / lr); figure ``lambda1-vs-step``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

from torch import nn

from vitprobe.command import Command, RunContext
from vitprobe.errors import UserError
from vitprobe.models.demo import DEMO_ZOO, train
from vitprobe.options import TRAINING_DATA, SharedOptions, option
from vitprobe.sharpness.tracker import SharpnessTracker, TrackResult, track_figure


@dataclass(kw_only=True)
class TrackOptions(SharedOptions):
    """``vitprobe track``: how long to train and how often to measure."""

    DATA: ClassVar[str] = TRAINING_DATA
    NUM_IMAGES: ClassVar[int] = 64
    steps: int = option(600, "training steps per model (default: 600; the zoo's recipes take "
                             "1500-6000)", metavar="N")
    every: int = option(50, "measure lambda_1 every N steps (default: 50)", metavar="N")
    tol: float = option(1e-2, "Lanczos relative residual (default: 1e-2)")
    cold_start: bool = option(False, "start every Lanczos from a random vector instead of the "
                                     "previous eigenvector")

    def check(self) -> None:
        super().check()
        if self.steps < 1 or self.every < 1 or not self.tol > 0:
            raise UserError(f"--steps and --every must be at least 1 and --tol above 0 "
                            f"(got {self.steps}, {self.every}, {self.tol})")


def demo_name(spec: str) -> str:
    """The zoo name of a ``demo:NAME`` spec; anything else cannot be retrained here."""
    name = spec.removeprefix("demo:")
    if not spec.startswith("demo:") or name not in DEMO_ZOO:
        raise UserError(f"track retrains the demo zoo ({', '.join(f'demo:{n}' for n in DEMO_ZOO)}), not "
                        f"{spec!r}: for your own model call vitprobe.SharpnessTracker from its training loop")
    return name


def run(ctx: RunContext[TrackOptions]) -> None:
    args = ctx.options
    results: list[TrackResult] = []
    for model in ctx.models():
        with ctx.isolated(model.label):
            name = demo_name(model.spec)
            data = ctx.data(model)
            images, labels = data.images(), data.labels()
            tracker = SharpnessTracker(every=args.every, tol=args.tol, warm_start=not args.cold_start,
                                       label=model.label, seed=args.seed)
            recipe = replace(DEMO_ZOO[name], steps=args.steps)
            ctx.log(f"track: training {model.label} ({recipe.optimizer}, {args.steps} steps), lambda_1 every "
                    f"{args.every} steps on {len(images)} training images")

            def measure(step: int, module: nn.Module, lr: float) -> None:
                tracker(step, module, (images, labels), lr=lr)

            train(recipe, after_step=measure)
            result = tracker.result()
            results.append(result)
            frame = result.to_frame().assign(optimizer=recipe.optimizer, family=model.family)
            ctx.add_rows(frame)
            ctx.print_table(frame.iloc[[0, len(frame) // 2, -1]][["model", "step", "value", "hvps", "lr",
                                                                   "eos_threshold", "loss"]])
    if results:
        ctx.save_figure(track_figure(results), "lambda1-vs-step")


COMMAND = Command(name="track", help="lambda_1 while the demo zoo trains (AdamW vs SAM), with the "
                  "edge-of-stability line 2/lr (Cohen et al. 2021)", options=TrackOptions, run=run)
