"""``vitprobe run RECIPE``, ``vitprobe report DIR ...`` and ``vitprobe demo``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd

from vitprobe import distributed
from vitprobe.command import Command, RunContext
from vitprobe.errors import UserError
from vitprobe.options import RECIPE_NAMES, SharedOptions, flag, option
from vitprobe.report.files import write_text
from vitprobe.studies.pivot import FORMATTERS, pivot, read_runs
from vitprobe.studies.recipe import Recipe, parse_recipe, recipe_path
from vitprobe.studies.runner import Outcome, copy_gallery, run_recipe

# shared options that, given to `run` or `demo`, override every analysis of the recipe
OVERRIDABLE = ("model", "data", "num_images", "batch_size", "seed", "device", "format",
               "allow_download", "trust_checkpoint")


def given(argv: list[str], name: str) -> bool:
    """Whether the option of field ``name`` was typed on the command line (not just defaulted)."""
    option = flag(name)
    return any(token == option or token.startswith(option + "=") for token in argv)


def overrides(ctx: RunContext[Any]) -> dict[str, Any]:
    """The recipe settings the command line of ``run`` or ``demo`` overrides."""
    return {RECIPE_NAMES.get(name, name): getattr(ctx.options, name)
            for name in OVERRIDABLE if given(ctx.argv[1:], name)}


def execute(ctx: RunContext[Any], recipe: Recipe, default_out: Path) -> tuple[Path, list[Outcome]]:
    """Run ``recipe`` into ``--out`` (or ``default_out``), copy its gallery, print a summary."""
    out = ctx.options.out or default_out
    ctx.out = out
    outcomes = run_recipe(recipe, out, overrides(ctx), only=ctx.options.only,
                          force=ctx.options.force, quiet=ctx.options.quiet)
    for note in copy_gallery(recipe, out) if distributed.is_main() else []:
        ctx.log(note)
    ctx.print_table(pd.DataFrame([vars(o) for o in outcomes]))
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        raise UserError(f"{len(failed)} of {len(outcomes)} analyses failed ("
                        + ", ".join(f"{o.analysis}: exit {o.exit_code}" for o in failed)
                        + f"); the others are in {out}")
    return out, outcomes


@dataclass(kw_only=True)
class StudyOptions(SharedOptions):
    """What `run` and `demo` share: which analyses of the recipe, and whether to rerun."""

    MODELS: ClassVar[tuple[str, ...]] = ()

    only: list[str] | None = option(help="run only these analyses", metavar="ANALYSIS")
    force: bool = option(False, "rerun analyses even when their results are complete")


@dataclass(kw_only=True)
class RunOptions(StudyOptions):
    """``vitprobe run RECIPE``."""

    recipe: str = option(help="a study recipe: a TOML file, or the name of a shipped one (demo, "
                              "vit_vs_resnet, sam)", positional=True)


def run_study(ctx: RunContext[RunOptions]) -> None:
    recipe = parse_recipe(recipe_path(ctx.options.recipe))
    execute(ctx, recipe, Path("vitprobe-out") / recipe.path.stem)


@dataclass(kw_only=True)
class ReportOptions(SharedOptions):
    """``vitprobe report DIR ...``: its --format and --out are a table's, not a figure folder's."""

    MODELS: ClassVar[tuple[str, ...]] = ()

    dirs: list[Path] = option([], "run folders", positional=True, metavar="DIR")
    pivot: list[str] | None = option(help="metrics to show, in order (default: every metric with "
                                          "one value per model)", metavar="METRIC")
    # replaces the shared figure --format: report writes a table
    format: str = option("markdown", "table format (default: markdown)",
                         choices=tuple(FORMATTERS))
    out: Path | None = option(help="the file to write the table to (default: stdout)",
                               recipe=False, metavar="FILE")


def report(ctx: RunContext[ReportOptions]) -> None:
    dirs = list(ctx.options.dirs)
    table = pivot(read_runs(dirs), ctx.options.pivot)
    render, suffix = FORMATTERS[ctx.options.format]
    text = render(table)
    target = ctx.options.out
    if target is None:
        print(text, end="")
        return
    if target.is_dir():
        raise UserError(f"--out {target} is a folder: report writes one file, e.g. --out table.{suffix}")
    try:
        write_text(target, text)
    except OSError as error:
        raise UserError(f"cannot write --out {target}: {error.strerror or error}") from None


@dataclass(kw_only=True)
class DemoOptions(StudyOptions):
    """``vitprobe demo``."""

    recipe: str = option("demo", "the demo study: a TOML file or a shipped recipe's name (default: "
                                 "demo)")


def demo(ctx: RunContext[DemoOptions]) -> None:
    from vitprobe.studies.demo import demo_recipe, findings

    out, outcomes = execute(ctx, demo_recipe(ctx.options.recipe), Path("vitprobe-out") / "demo")
    if distributed.is_main():
        print("\n" + "\n".join(findings(out, outcomes)))


COMMANDS = [
    Command(name="run", help="run a study recipe (TOML) into one folder, skipping finished analyses",
            options=RunOptions, run=run_study),
    Command(name="report", help="one wide table (models x metrics) from the CSVs of run folders",
            options=ReportOptions, run=report),
    Command(name="demo", help="run the embedded demo study and print what it measured",
            options=DemoOptions, run=demo),
]
