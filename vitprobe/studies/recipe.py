"""Study recipes: a TOML file naming models, data, and the analyses with their settings.

::

    [study]
    name = "demo"
    models = ["demo:vit", "demo:resnet"]
    data = "shapes"              # or data_env = "IMAGENET_VAL": a folder named by the environment
    train_data_env = "IMAGENET_TRAIN"  # sharpness and landscape run on training data (or train_data =
                                 # "..."); without either they take data, shapes as shapes:train
    num_images = 256             # any shared option: num_images, batch_size, seed, device, ...
    [study.gallery]              # figures copied to the top of the out folder
    "sharpness.png" = "figures/sharpness*.png"

    [sharpness]                  # one section per analysis, keys = that command's options
    top_k = 3                    # --top-k 3; lists give several values; true/false for flags
    models = ["demo:vit"]        # shared options may be overridden per analysis

Sections run in file order. Errors name the file, the line and the key.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vitprobe.errors import UserError
from vitprobe.options import SharedOptions, check_setting, field_of, options_from_settings, recipe_keys

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ANALYSES = ("evaluate", "throughput", "sharpness", "attention", "receptive-field", "landscape",
            "similarity", "frequency", "corruptions", "map-quality")
STUDY_KEYS = ("name", "description", "models", "data", "data_env", "data_help", "train_data",
              "train_data_env", "train_data_help", "gallery")
# the analyses the papers measure on training data (Keskar et al., Li et al., Foret et al., Chen et al.)
TRAINING_ANALYSES = ("sharpness", "landscape", "track")
SHARED_KEYS = ("num_images", "batch_size", "seed", "device", "format", "allow_download")
# a recipe is a file people share: unpickling code is allowed from the command line only
COMMAND_LINE_ONLY = ("trust_checkpoint",)


def command_options() -> dict[str, type[SharedOptions]]:
    """The options class of every installed command, by command name."""
    from vitprobe.cli import discover_commands

    return {name: command.options for name, command in discover_commands().items()}


@dataclass
class Analysis:
    """One section: a command and the recipe keys given to it."""

    command: str
    settings: dict[str, Any]
    available: bool = True


@dataclass
class Recipe:
    path: Path
    name: str
    description: str
    models: list[str]
    data: str | None
    data_env: str | None
    data_help: str | None
    shared: dict[str, Any]
    train_data: str | None = None
    train_data_env: str | None = None
    train_data_help: str | None = None
    analyses: list[Analysis] = field(default_factory=list)
    gallery: dict[str, str] = field(default_factory=dict)

    def resolve_data(self) -> str:
        """The data spec: ``$<data_env>`` when set, else ``data``; a UserError if neither."""
        if self.data_env and os.environ.get(self.data_env):
            return os.environ[self.data_env]
        if self.data:
            return self.data
        need = f" ({self.data_help})" if self.data_help else ""
        raise UserError(f"it needs data{need}: set {self.data_env} to its folder or pass --data")

    def resolve_training_data(self) -> str:
        """The data of the training analyses: ``$<train_data_env>`` or ``train_data`` when the
        recipe names them (a UserError when it names an unset variable), else the study's data,
        ``shapes`` becoming its training split ``shapes:train``."""
        if self.train_data_env and os.environ.get(self.train_data_env):
            return os.environ[self.train_data_env]
        if self.train_data:
            return self.train_data
        if self.train_data_env:
            need = f" ({self.train_data_help})" if self.train_data_help else ""
            raise UserError(f"its sharpness and landscape analyses need training data{need}: "
                            f"set {self.train_data_env} to its folder or pass --data")
        data = self.resolve_data()
        return "shapes:train" if data == "shapes" else data


SHIPPED = Path(__file__).resolve().parent / "recipes"


def shipped_recipes() -> list[str]:
    """The names of the recipes that ship inside the package (``demo``, ``vit_vs_resnet``, ...)."""
    return sorted(path.stem for path in SHIPPED.glob("*.toml"))


def recipe_path(spec: str | Path) -> Path:
    """A recipe file: ``spec`` itself when it is a file, else the shipped recipe of that name."""
    path = Path(spec)
    if path.is_file():
        return path
    shipped = SHIPPED / f"{path.stem if path.suffix == '.toml' else path.name}.toml"
    if shipped.is_file() and path.parent == Path("."):
        return shipped
    raise UserError(f"no recipe {str(spec)!r}: give a TOML file or one of the shipped recipes "
                    f"({', '.join(shipped_recipes())})")


class RecipeError(UserError):
    """A recipe that cannot be run as written: ``path:line: message``."""


def line_of(text: str, section: str, key: str | None = None) -> int | None:
    """1-based line of ``[section]`` (or of ``key`` inside it) in the TOML source."""
    current = None
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        header = re.fullmatch(r"\[\s*\"?([^\]\"]+?)\"?\s*\]", stripped)
        if header:
            current = header.group(1).strip()
            if key is None and current == section:
                return number
            continue
        if key is not None and current == section and re.match(
                rf"\"?{re.escape(key)}\"?\s*=", stripped):
            return number
    return None


def _error(path: Path, text: str, message: str, section: str, key: str | None = None) -> RecipeError:
    line = line_of(text, section, key)
    return RecipeError(f"{path}:{line}: {message}" if line else f"{path}: {message}")


def _suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_keys(path: Path, text: str, section: str, values: dict[str, Any],
                options: type[SharedOptions], allowed: list[str]) -> None:
    for key, value in values.items():
        known = key in allowed or key.replace("-", "_") in allowed
        if not known or field_of(options, key) is None:
            raise _error(path, text, f"[{section}] has no setting {key!r}{_suggest(key, allowed)}; "
                         f"settings: {', '.join(allowed)}", section, key)
        problem = check_setting(options, key, value)
        if problem:
            raise _error(path, text, f"[{section}] {key} {problem}", section, key)


def _check_values(path: Path, text: str, section: str, settings: dict[str, Any],
                  options: type[SharedOptions]) -> None:
    """The command's own rules (a count below 1, a bad range): as the command line checks them."""
    try:
        options_from_settings(options, settings).check()
    except UserError as error:
        raise _error(path, text, f"[{section}] {error}", section) from None


def parse_recipe(path: str | Path) -> Recipe:
    """Read and check a recipe; a :class:`RecipeError` names the bad line and key."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"no recipe at {path}")
    text = path.read_text()
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise RecipeError(f"{path}: not valid TOML: {error}") from None
    study = document.get("study")
    if not isinstance(study, dict):
        raise RecipeError(f"{path}: a recipe needs a [study] section with its models")
    for section, settings in document.items():
        for key in COMMAND_LINE_ONLY:
            if isinstance(settings, dict) and (key in settings or key.replace("_", "-") in settings):
                raise _error(path, text, f"[{section}] sets {key}: a recipe cannot allow unpickling "
                             "code; pass --trust-checkpoint on the command line", section, key)
    parsers = command_options()

    for key in study:
        if key not in STUDY_KEYS and key not in SHARED_KEYS:
            raise _error(path, text, f"[study] has no setting {key!r}"
                         f"{_suggest(key, [*STUDY_KEYS, *SHARED_KEYS])}; settings: "
                         f"{', '.join((*STUDY_KEYS, *SHARED_KEYS))}", "study", key)
    models = study.get("models")
    if (not isinstance(models, list) or not models
            or not all(isinstance(m, str) and m.strip() for m in models)):
        raise _error(path, text, "[study] models must be a non-empty list of model specs",
                     "study", "models" if "models" in study else None)
    for key in ("name", "description", "data", "data_env", "data_help", "train_data", "train_data_env",
                "train_data_help"):
        if key in study and not isinstance(study[key], str):
            raise _error(path, text, f"[study] {key} must be a string", "study", key)
    gallery = study.get("gallery", {})
    if not isinstance(gallery, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in gallery.items()):
        raise _error(path, text, "[study.gallery] must map file names to glob patterns",
                     "study", "gallery")
    for name in gallery:
        if Path(name).is_absolute() or ".." in Path(name).parts or not Path(name).name:
            raise _error(path, text, f"[study.gallery] {name!r} must be a file name inside the out "
                         "folder (no absolute path, no '..')", "study", "gallery")
    shared = {k: v for k, v in study.items() if k in SHARED_KEYS}
    _check_keys(path, text, "study", shared, SharedOptions, list(SHARED_KEYS))

    known = sorted(set(ANALYSES) | (set(parsers) - {"run", "report", "demo"}))
    analyses = []
    for section, settings in document.items():
        if section == "study":
            continue
        if section not in known:
            raise _error(path, text, f"[{section}] is not an analysis{_suggest(section, known)}; "
                         f"analyses: {', '.join(known)}", section)
        if not isinstance(settings, dict):
            raise _error(path, text, f"{section} must be a [section] of settings", section, section)
        if section not in parsers:  # an analysis this installation lacks: reported when run
            analyses.append(Analysis(section, dict(settings), available=False))
            continue
        _check_keys(path, text, section, settings, parsers[section], recipe_keys(parsers[section]))
        _check_values(path, text, section, {**shared, **settings}, parsers[section])
        analyses.append(Analysis(section, dict(settings)))
    if not analyses:
        raise RecipeError(f"{path}: no analyses: add a section such as [evaluate]")
    return Recipe(
        path=path,
        name=study.get("name", path.stem),
        description=study.get("description", ""),
        models=[m.strip() for m in models],
        data=study.get("data", None if "data_env" in study else "shapes"),
        data_env=study.get("data_env"),
        data_help=study.get("data_help"),
        shared=shared,
        train_data=study.get("train_data"),
        train_data_env=study.get("train_data_env"),
        train_data_help=study.get("train_data_help"),
        analyses=analyses,
        gallery=dict(gallery),
    )
