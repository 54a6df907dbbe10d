"""``vitprobe models``: the spec forms, and the demo zoo (``--retrain`` reproduces it)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from safetensors.torch import load_file

from vitprobe.command import Command, RunContext
from vitprobe.errors import UserError
from vitprobe.models import demo
from vitprobe.models.demo import DEMO_ZOO, cache_dir, shipped_path
from vitprobe.models.specs import SPEC_FORMS
from vitprobe.options import SharedOptions, option


@dataclass(kw_only=True)
class ModelsOptions(SharedOptions):
    """``vitprobe models``: retraining the demo zoo."""

    MODELS: ClassVar[tuple[str, ...]] = ()

    retrain: bool = option(False, "train the demo zoo again with its deterministic recipes (into "
                                  "--out, default the cache) and report the difference from the "
                                  "shipped weights")
    only: list[str] | None = option(help="retrain only these demo models", choices=tuple(DEMO_ZOO),
                                    metavar="NAME")
    steps: int | None = option(help="train N steps instead of each recipe's (a quick check, not "
                                    "the zoo)", metavar="N")

    def check(self) -> None:
        super().check()
        if self.steps is not None and self.steps < 1:
            raise UserError(f"--steps must be positive, got {self.steps}")


def _record(path: Path) -> dict | None:
    try:
        return json.loads(path.with_suffix(".json").read_text())
    except (OSError, ValueError):
        return None


def retrain(ctx: RunContext[ModelsOptions]) -> None:
    args = ctx.options
    folder = args.out or cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    for name in args.only or demo.DEMO_ZOO:
        ctx.log(f"training demo:{name} into {folder}")
        path, record = demo.train_into(name, folder, args.steps)
        shipped = shipped_path(name)
        line = f"demo:{name}: test accuracy {record['test_accuracy']:.1%} in {record['train_seconds']:.0f} s"
        if shipped.exists() and shipped != path:
            before = load_file(str(shipped))
            after = load_file(str(path))
            largest = max(float((before[k].float() - after[k].float()).abs().max()) for k in before)
            line += (f"; shipped {(_record(shipped) or {}).get('test_accuracy', float('nan')):.1%}, "
                     f"largest weight difference {largest:.3g}"
                     + (" (identical)" if record["sha256"] == (_record(shipped) or {}).get("sha256") else ""))
        print(line, flush=True)


def run(ctx: RunContext[ModelsOptions]) -> None:
    if ctx.options.retrain:
        retrain(ctx)
        return
    print("Model specs (--model SPEC, repeatable):")
    for form, meaning in SPEC_FORMS:
        print(f"  {form:<28} {meaning}")
    print("\nDemo zoo (shipped with the package, trained on the embedded 'shapes' data):")
    for name, recipe in DEMO_ZOO.items():
        record = _record(shipped_path(name))
        state = (f"shipped, test accuracy {record['test_accuracy']:.1%}" if record
                 else "not shipped: trained on first use")
        print(f"  demo:{name:<12} timm {recipe.architecture}, {recipe.optimizer}, {recipe.steps} steps: {state}")


COMMANDS = [Command(name="models", help="list the model spec forms and the demo zoo; --retrain reproduces the zoo",
                    options=ModelsOptions, run=run)]
