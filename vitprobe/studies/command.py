"""``vitprobe run RECIPE``, ``vitprobe report DIR ...`` and ``vitprobe demo``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pandas as pd

from vitprobe import distributed
from vitprobe.command import Command, RunContext
from vitprobe.errors import UserError
from vitprobe.report.files import write_text
from vitprobe.studies.pivot import FORMATTERS, pivot, read_runs
from vitprobe.studies.recipe import Recipe, parse_recipe, recipe_path
from vitprobe.studies.runner import Outcome, copy_gallery, run_recipe

# shared options that, given to `run` or `demo`, override every analysis of the recipe
OVERRIDABLE = {"--model": "models", "--data": "data", "--num-images": "num_images",
               "--batch-size": "batch_size", "--seed": "seed", "--device": "device",
               "--format": "format", "--allow-download": "allow_download",
               "--trust-checkpoint": "trust_checkpoint"}


def given(argv: list[str], option: str) -> bool:
    """Whether ``option`` was typed on the command line (not just defaulted)."""
    return any(token == option or token.startswith(option + "=") for token in argv)


def overrides(ctx: RunContext) -> dict[str, Any]:
    argv = ctx.argv[1:]
    return {key: getattr(ctx.args, key if key != "models" else "model")
            for option, key in OVERRIDABLE.items() if given(argv, option)}


def execute(ctx: RunContext, recipe: Recipe, default_out: Path) -> tuple[Path, list[Outcome]]:
    """Run ``recipe`` into ``--out`` (or ``default_out``), copy its gallery, print a summary."""
    out = ctx.args.out if given(ctx.argv[1:], "--out") else default_out
    ctx.out = out
    outcomes = run_recipe(recipe, out, overrides(ctx), only=ctx.args.only,
                          force=ctx.args.force, quiet=ctx.args.quiet)
    for note in copy_gallery(recipe, out) if distributed.is_main() else []:
        ctx.log(note)
    ctx.print_table(pd.DataFrame([vars(o) for o in outcomes]))
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        raise UserError(f"{len(failed)} of {len(outcomes)} analyses failed ("
                        + ", ".join(f"{o.analysis}: exit {o.exit_code}" for o in failed)
                        + f"); the others are in {out}")
    return out, outcomes


def add_study_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("study")
    group.add_argument("--only", nargs="+", metavar="ANALYSIS", help="run only these analyses")
    group.add_argument("--force", action="store_true",
                       help="rerun analyses even when their results are complete")


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="a study recipe: a TOML file, or the name of a shipped one "
                                       "(demo, vit_vs_resnet, sam)")
    add_study_arguments(parser)


def run_study(ctx: RunContext) -> None:
    recipe = parse_recipe(recipe_path(ctx.args.recipe))
    execute(ctx, recipe, Path("vitprobe-out") / recipe.path.stem)


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dirs", type=Path, nargs="+", metavar="DIR", help="run folders")
    _drop_shared_option(parser, "--format")  # report's --format picks a table format
    group = parser.add_argument_group("report")
    group.add_argument("--pivot", nargs="+", metavar="METRIC",
                       help="metrics to show, in order (default: every metric with one value "
                            "per model)")
    group.add_argument("--format", choices=tuple(FORMATTERS), default="markdown",
                       help="table format (default: markdown)")


def _drop_shared_option(parser: argparse.ArgumentParser, option: str) -> None:
    """Remove a shared option from this subparser only (the action object is shared by all
    subparsers, so argparse's "resolve" conflict handler would strip it from every one)."""
    action = parser._option_string_actions.pop(option)
    parser._actions.remove(action)
    for group in parser._action_groups:
        if action in group._group_actions:
            group._group_actions.remove(action)


def report(ctx: RunContext) -> None:
    dirs = list(ctx.args.dirs)
    table = pivot(read_runs(dirs), ctx.args.pivot)
    render, suffix = FORMATTERS[ctx.args.format]
    text = render(table)
    if not given(ctx.argv[1:], "--out"):
        print(text, end="")
        return
    target = ctx.args.out
    if target.is_dir():
        raise UserError(f"--out {target} is a folder: report writes one file, e.g. --out table.{suffix}")
    try:
        write_text(target, text)
    except OSError as error:
        raise UserError(f"cannot write --out {target}: {error.strerror or error}") from None


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    from vitprobe.studies.demo import DEMO_RECIPE

    parser.add_argument("--recipe", default=DEMO_RECIPE,
                        help="the demo study: a TOML file or a shipped recipe's name (default: demo)")
    add_study_arguments(parser)


def demo(ctx: RunContext) -> None:
    from vitprobe.studies.demo import demo_recipe, findings

    out, outcomes = execute(ctx, demo_recipe(ctx.args.recipe), Path("vitprobe-out") / "demo")
    if distributed.is_main():
        print("\n" + "\n".join(findings(out, outcomes)))


COMMANDS = [
    Command(name="run", help="run a study recipe (TOML) into one folder, skipping finished analyses",
            add_arguments=add_run_arguments, run=run_study, default_models=()),
    Command(name="report", help="one wide table (models x metrics) from the CSVs of run folders",
            add_arguments=add_report_arguments, run=report, default_models=()),
    Command(name="demo", help="run the embedded demo study and print what it measured",
            add_arguments=add_demo_arguments, run=demo, default_models=()),
]
