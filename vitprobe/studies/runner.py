"""Run a recipe: each analysis in-process, with the options object its settings make, into one
out folder, resumably.

An analysis is skipped when its ``<command>.json`` sidecar in the out folder says
``"status": "complete"``, records the same options as the ones it would run with now (where
the output goes and ``quiet`` aside), and the CSV beside it is the one it describes (its
SHA-256), so a second run of a finished study does nothing, a changed setting reruns just that
analysis, and a run that was killed or overwritten since is rerun.
"""

from __future__ import annotations

import functools
import glob
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vitprobe.errors import UserError
from vitprobe.options import SharedOptions, options_from_settings, recorded
from vitprobe.progress import log
from vitprobe.report.files import atomic_write, sha256_file
from vitprobe.studies.recipe import TRAINING_ANALYSES, Analysis, Recipe, command_options


@dataclass
class Outcome:
    """What happened to one analysis of a study."""

    analysis: str
    status: str  # "ran", "skipped", "failed", "unavailable"
    seconds: float = 0.0
    exit_code: int | None = None


def analysis_models(recipe: Recipe, analysis: Analysis,
                    overrides: dict[str, Any] | None = None) -> list[str]:
    """The model specs one analysis runs on (``run --model`` > section > [study])."""
    models = (overrides or {}).get("models") or analysis.settings.get("models") or recipe.models
    return [models] if isinstance(models, str) else list(models)


def analysis_settings(recipe: Recipe, analysis: Analysis,
                      overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The recipe keys one analysis runs with.

    Precedence: the recipe's [study] settings, then the analysis section, then
    ``overrides`` (the options given to ``vitprobe run`` itself).
    """
    given = {**recipe.shared, **analysis.settings, **(overrides or {})}
    settings = {"models": analysis_models(recipe, analysis, overrides),
                **{key: value for key, value in given.items() if key != "models"}}
    if "data" not in settings:
        settings["data"] = (recipe.resolve_training_data() if analysis.command in TRAINING_ANALYSES
                            else recipe.resolve_data())
    return settings


def analysis_options(command: str, settings: dict[str, Any], out: Path,
                     quiet: bool = False) -> SharedOptions:
    """The options object that runs one analysis into ``out``."""
    options = options_from_settings(command_options()[command], settings)
    options.out, options.quiet = out, quiet
    return options


def is_complete(out: Path, command: str, options: SharedOptions) -> bool:
    """Whether ``<out>/<command>.json`` records a complete run with exactly ``options`` and the
    CSV beside it is the one that run wrote."""
    sidecar, table = out / f"{command}.json", out / f"{command}.csv"
    try:
        meta = json.loads(sidecar.read_text())
        csv_sha = sha256_file(table) if table.exists() else None
    except (OSError, ValueError):
        return False
    return (isinstance(meta, dict) and meta.get("status") == "complete"
            and meta.get("options") == recorded(options) and meta.get("csv_sha256") == csv_sha)


def check_models(specs: list[str], settings: dict[str, Any]) -> list[str]:
    """Load each model once, before any work, and collect what is missing (one line each)."""
    from vitprobe.models import load_model

    problems = []
    for spec in dict.fromkeys(specs):
        try:
            load_model(spec, allow_download=bool(settings.get("allow_download")),
                       trust_checkpoint=bool(settings.get("trust_checkpoint")), device="cpu")
        except UserError as error:
            problems.append(str(error))
    return problems


def summarise(problems: list[str]) -> str:
    """Problems joined in one line; a hint shared by several (after their last '; ') once."""
    heads, hints = [], []
    for problem in problems:
        head, _, hint = problem.rpartition("; ") if "; " in problem else (problem, "", "")
        heads.append(head)
        if hint and hint not in hints:
            hints.append(hint)
    return "; ".join(heads) + "".join(f" ({hint})" for hint in hints)


def check_data(recipe: Recipe, data: str) -> list[str]:
    """A one-line problem if ``data`` names a path that does not exist."""
    if data.split(":")[0] == "shapes" or any(ch in data for ch in "*?[") or Path(data).exists():
        return []
    source = f" (from ${recipe.data_env})" if recipe.data_env and data != recipe.data else ""
    return [f"data {data!r}{source} does not exist"]


def run_recipe(recipe: Recipe, out: Path, overrides: dict[str, Any] | None = None,
               only: list[str] | None = None, force: bool = False,
               quiet: bool = False) -> list[Outcome]:
    """Run the recipe's analyses into ``out``; return what happened to each.

    Missing weights or data are found before anything runs, all at once, as one
    UserError. Analyses this installation lacks are reported as "unavailable".
    """
    from vitprobe import cli

    overrides = overrides or {}
    chosen = [a for a in recipe.analyses if not only or a.command in only]
    unknown = sorted(set(only or ()) - {a.command for a in recipe.analyses})
    if unknown:
        raise UserError(f"{recipe.path} has no analysis {', '.join(unknown)}")
    problems: list[str] = []
    plans: list[tuple[Analysis, SharedOptions | None, bool]] = []
    models, datasets = [], []
    for analysis in chosen:
        if not analysis.available:
            plans.append((analysis, None, False))
            continue
        try:
            settings = analysis_settings(recipe, analysis, overrides)
        except UserError as error:  # the recipe's data is not given: still check the models
            problems += [str(error)] if str(error) not in problems else []
            models += analysis_models(recipe, analysis, overrides)
            continue
        options = analysis_options(analysis.command, settings, out, quiet)
        done = not force and is_complete(out, analysis.command, options)
        plans.append((analysis, options, done))
        if not done:
            models += settings["models"]
            datasets.append(settings["data"])
    problems += [p for data in dict.fromkeys(datasets) for p in check_data(recipe, data)]
    problems += check_models(models, {**recipe.shared, **overrides})
    if problems:
        raise UserError(f"{recipe.path} cannot run: {summarise(problems)}")

    outcomes = []
    for analysis, planned, done in plans:
        if planned is None:
            log(f"[{analysis.command}] not available in this installation: skipped")
            outcomes.append(Outcome(analysis.command, "unavailable"))
        elif done:
            log(f"[{analysis.command}] complete in {out}: skipped")
            outcomes.append(Outcome(analysis.command, "skipped"))
        else:
            log(f"[{analysis.command}] vitprobe {' '.join(cli.command_line(analysis.command, planned))}")
            started = time.perf_counter()
            code = cli.run_command(analysis.command, planned)
            if code == 130:  # interrupted: stop the study, keep what is finished
                raise KeyboardInterrupt
            seconds = time.perf_counter() - started
            outcomes.append(Outcome(analysis.command, "ran" if code == 0 else "failed",
                                    round(seconds, 1), code))
    return outcomes


def copy_gallery(recipe: Recipe, out: Path) -> list[str]:
    """Copy each gallery figure (first match of its glob in ``out``) to ``out/<name>``.

    Returns one note per gallery entry that matched nothing.
    """
    notes = []
    for name, pattern in recipe.gallery.items():
        matches = sorted(glob.glob(str(out / pattern)))
        if not matches:
            notes.append(f"gallery: nothing in {out} matches {pattern!r} for {name}")
            continue
        atomic_write(out / name, functools.partial(_copy_to, matches[0]))
    return notes


def _copy_to(source: str, target: Path) -> None:
    shutil.copyfile(source, target)
