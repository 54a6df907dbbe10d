"""``vitprobe models``: the spec forms, and the demo zoo with its cache state."""

from __future__ import annotations

import argparse
import json

from vitprobe.command import Command, RunContext
from vitprobe.models.demo import DEMO_ZOO, weights_path
from vitprobe.models.specs import SPEC_FORMS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """No options of its own."""


def run(ctx: RunContext) -> None:
    print("Model specs (--model SPEC, repeatable):")
    for form, meaning in SPEC_FORMS:
        print(f"  {form:<20} {meaning}")
    print("\nDemo zoo (trained on first use on the embedded 'shapes' data):")
    for name, recipe in DEMO_ZOO.items():
        path = weights_path(name)
        record_path = path.with_suffix(".json")
        if record_path.exists():
            record = json.loads(record_path.read_text())
            state = f"cached, test accuracy {record['test_accuracy']:.1%}"
        else:
            state = "not trained yet"
        print(f"  demo:{name:<12} timm {recipe.architecture}, {recipe.optimizer}, "
              f"{recipe.steps} steps: {state}")


COMMANDS = [Command(name="models", help="list the model spec forms and the demo zoo",
                    add_arguments=add_arguments, run=run, default_models=())]
