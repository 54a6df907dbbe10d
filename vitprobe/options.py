"""Typed command options: one dataclass per command, from which everything else follows.

A command declares its options as a dataclass that extends :class:`SharedOptions`, each
field made by :func:`option`. From that one declaration come

- the command's argparse parser (:func:`add_options`): the flag is the field name with
  dashes, the type, number of values and flag-ness come from the annotation
  (``int``, ``float | None``, ``list[int] | None``, ``tuple[int, int] | None``, ``bool``);
- the check of a recipe's settings (:func:`check_setting`), which accepts exactly what the
  command line accepts and converts it (:func:`options_from_settings`);
- the command line that reproduces a run (:func:`to_argv`) and the JSON record of every
  option it ran with (:func:`recorded`).

The study runner builds an options object from a recipe and runs the command in-process with it.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from vitprobe.errors import UserError
from vitprobe.models.demo import DEMO_SPECS
from vitprobe.models.input_config import INTERPOLATIONS
from vitprobe.result import plain

O = TypeVar("O", bound="SharedOptions")
# options that only say where and how a run is shown: not part of what it computes
PRESENTATION = ("out", "quiet")


def option(default: Any = None, help: str = "", *, group: str | None = None, recipe: bool = True,
           positional: bool = False, **argparse_kwargs: Any) -> Any:
    """A field of an options dataclass.

    ``group`` is its heading in ``--help`` (default: the command's name); ``recipe=False``
    keeps it out of recipes; other keywords (``metavar``, ``choices``, ``action``, ``nargs``,
    ``const``) go to ``argparse.add_argument`` as they are.
    """
    metadata = {"help": help, "group": group, "recipe": recipe, "positional": positional,
                "argparse": argparse_kwargs}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class Shape:
    """What an annotation says about an option: the type of each value and how many values."""

    kind: type
    count: str | int | None  # None: one value; "+": one or more; n: exactly n
    optional: bool

    @property
    def many(self) -> bool:
        return self.count is not None


def shape_of(annotation: Any) -> Shape:
    """``int | None`` -> (int, None, optional); ``list[float]`` -> (float, "+"); ``tuple[int, int]``
    -> (int, 2); ``bool`` -> (bool, None)."""
    optional = False
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = len(members) < len(typing.get_args(annotation))
        (annotation,) = members
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is list:
        return Shape(args[0], "+", optional)
    if origin is tuple:
        return Shape(args[0], len(args), optional)
    if origin is dict:
        return Shape(dict, None, optional)
    return Shape(annotation, None, optional)


def _default(item: dataclasses.Field) -> Any:
    """A field's default value (a fresh one for a list)."""
    if item.default is not dataclasses.MISSING:
        return item.default
    factory: Callable[[], Any] = item.default_factory  # type: ignore[assignment]  # set where default is not
    return factory()


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def flag(name: str) -> str:
    """The command-line flag of a field: ``top_k`` -> ``--top-k``."""
    return "--" + name.replace("_", "-")


def add_options(parser: argparse.ArgumentParser, cls: type[SharedOptions], heading: str) -> None:
    """Add one argparse argument per field of ``cls``, grouped under their headings (the
    command's own options under ``heading``)."""
    hints = _hints(cls)
    groups: dict[str, Any] = {}
    for item in fields(cls):
        meta = item.metadata
        title = meta["group"] or heading
        if title not in groups and not meta["positional"]:
            groups[title] = parser.add_argument_group(title)
        shape = shape_of(hints[item.name])
        kwargs: dict[str, Any] = {"help": meta["help"] or None}
        default = _default(item)
        if shape.kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction if default else "store_true"
        elif shape.kind is not dict:
            kwargs["type"] = shape.kind
            if shape.many:
                kwargs["nargs"] = shape.count
        kwargs.update(meta["argparse"])
        if kwargs.get("action") == "append":
            kwargs.pop("nargs", None)
        if meta["positional"]:
            parser.add_argument(item.name, **kwargs)
        else:
            groups[title].add_argument(flag(item.name), default=default, **kwargs)


def from_namespace(cls: type[O], namespace: argparse.Namespace) -> O:
    """The options object of a parsed command line."""
    return cls(**{item.name: getattr(namespace, item.name) for item in fields(cls)})


def recipe_keys(cls: type[SharedOptions]) -> list[str]:
    """The keys a recipe section may use for this command (``models`` for ``--model``)."""
    return [RECIPE_NAMES.get(item.name, item.name) for item in fields(cls) if item.metadata["recipe"]]


RECIPE_NAMES = {"model": "models"}


def field_of(cls: type[SharedOptions], key: str) -> dataclasses.Field | None:
    """The recipe-settable field a recipe key names (``top_k`` or ``top-k``; ``models``)."""
    name = {v: k for k, v in RECIPE_NAMES.items()}.get(key, key.replace("-", "_"))
    found = {item.name: item for item in fields(cls)}.get(name)
    return found if found is not None and found.metadata["recipe"] else None


def _checked_field(cls: type[SharedOptions], key: str) -> dataclasses.Field:
    """:func:`field_of` for a key the recipe check has already accepted."""
    item = field_of(cls, key)
    if item is None:
        raise UserError(f"{cls.__name__} has no recipe setting {key!r}")
    return item


def _describe(kind: type) -> str:
    return {int: "an integer", float: "a number"}.get(kind, "a string")


def _fits(kind: type, value: Any) -> bool:
    if isinstance(value, bool):
        return kind is bool
    if kind is int:
        return isinstance(value, int)
    if kind is float:
        return isinstance(value, (int, float))
    return isinstance(value, str)


def check_setting(cls: type[SharedOptions], key: str, value: Any) -> str | None:
    """Why a recipe cannot give ``value`` to ``key`` (None if it can), in the terms the
    command line would use."""
    item = _checked_field(cls, key)
    shape = shape_of(_hints(cls)[item.name])
    if shape.kind is bool:
        return None if isinstance(value, bool) else "expects true or false"
    values = value if isinstance(value, list) else [value]
    if isinstance(value, list) and not shape.many:
        return "takes one value, not a list"
    if isinstance(shape.count, int) and len(values) != shape.count:
        return f"takes {shape.count} values, got {len(values)}"
    if shape.many and not values:
        return "needs at least one value"
    choices = item.metadata["argparse"].get("choices")
    for one in values:
        if not _fits(shape.kind, one):
            return (f"expects {_describe(shape.kind)}" + (" or a list of them" if shape.many else "")
                    + f", got {one!r}")
        if choices is not None and one not in choices:
            return f"must be one of {', '.join(map(str, choices))}, got {one!r}"
    return None


def _convert(shape: Shape, value: Any) -> Any:
    if shape.kind is bool or value is None:
        return value
    if not shape.many:
        return shape.kind(value)
    converted = [shape.kind(v) for v in (value if isinstance(value, list) else [value])]
    return tuple(converted) if isinstance(shape.count, int) else converted


def options_from_settings(cls: type[O], settings: dict[str, Any]) -> O:
    """The options object of checked recipe settings (keys as :func:`recipe_keys` names them)."""
    hints = _hints(cls)
    values = {}
    for key, value in settings.items():
        item = _checked_field(cls, key)
        values[item.name] = _convert(shape_of(hints[item.name]), value)
    return cls(**values)


def _tokens(item: dataclasses.Field, shape: Shape, value: Any) -> list[str]:
    name = flag(item.name)
    action = item.metadata["argparse"].get("action")
    if shape.kind is bool:
        default = item.default
        return [] if value == default else [name if value else "--no-" + name[2:]]
    if item.metadata["positional"]:
        return [str(v) for v in (value if shape.many else [value])]
    if shape.kind is dict:  # --model-args: one group per --model, after it
        return []
    values = [str(v) for v in (value if shape.many else [value])]
    if action == "append":
        return [token for v in values for token in (name, v)]
    if len(values) == 1 and values[0].startswith("-"):
        return [f"{name}={values[0]}"]  # else argparse would read "-1:1" as an option
    return [name, *values]


def to_argv(options: SharedOptions) -> list[str]:
    """The command-line tokens (after the command's name) that give ``options``: the options
    that differ from their defaults, in declaration order."""
    hints = _hints(type(options))
    argv: list[str] = []
    for item in fields(options):
        value = getattr(options, item.name)
        default = _default(item)
        if value == default and not item.metadata["positional"]:
            continue
        argv += _tokens(item, shape_of(hints[item.name]), value)
        if item.name == "model" and options.model_args:
            argv = _with_model_args(argv, options.model_args)
    return argv


def _with_model_args(argv: list[str], model_args: dict[int, dict[str, Any]]) -> list[str]:
    """Insert ``--model-args K=V ...`` after the ``--model`` each group belongs to."""
    out, index = [], -1
    for token in argv:
        out.append(token)
        if out[-2:-1] == ["--model"]:
            index += 1
            if model_args.get(index):
                out += ["--model-args", *(f"{k}={v!r}" for k, v in model_args[index].items())]
    return out


def recorded(options: SharedOptions) -> dict[str, Any]:
    """Every option a run computed with, as JSON holds it (:func:`vitprobe.result.plain`); what
    only presents the run (``out``, ``quiet``) is left out."""
    return {item.name: plain(getattr(options, item.name)) for item in fields(options)
            if item.name not in PRESENTATION}


class ModelArgs(argparse.Action):
    """``--model-args KEY=VALUE ...``: stored per ``--model`` index, values as Python literals."""

    def __call__(self, parser, namespace, values, option_string=None):
        index = len(namespace.model or []) - 1
        if index < 0:
            parser.error("--model-args must follow the --model it applies to")
        kwargs = dict((getattr(namespace, self.dest) or {}).get(index, {}))
        for item in values:
            key, sep, text = item.partition("=")
            if not sep or not key.isidentifier():
                parser.error(f"--model-args takes KEY=VALUE, got {item!r}")
            try:
                kwargs[key] = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                kwargs[key] = text
        setattr(namespace, self.dest, {**(getattr(namespace, self.dest) or {}), index: kwargs})


# Keskar et al., Li et al., Foret et al. and Chen et al. measure sharpness and landscapes on the
# training data: those commands take this split without --data
TRAINING_DATA = "shapes:train"
SHARED = "shared options"
INPUT = "input configuration (overrides the model's own; needed for models that have none)"


@dataclass(kw_only=True)
class SharedOptions:
    """The options every command takes; a command's own options extend these, and set the
    defaults the shared options take in that command (``MODELS``, ``DATA``, ``NUM_IMAGES``,
    ``BATCH_SIZE``)."""

    MODELS: ClassVar[tuple[str, ...]] = DEMO_SPECS  # without --model
    DATA: ClassVar[str] = "shapes"  # without --data: the test split
    NUM_IMAGES: ClassVar[int] = 256
    BATCH_SIZE: ClassVar[int] = 64

    model: list[str] | None = option(
        help="model spec, repeatable (see `vitprobe models`); default: the demo zoo",
        group=SHARED, action="append", metavar="SPEC")
    model_args: dict[int, dict[str, Any]] | None = option(
        help="constructor arguments of the --model before it (timm, torchvision or py: builder), "
             "values as Python literals, e.g. img_size=32 num_classes=10",
        group=SHARED, recipe=False, action=ModelArgs, nargs="+", metavar="KEY=VALUE")
    data: str | None = option(
        help="'shapes' or 'shapes:train' (embedded), an image folder, a glob or a file (default: "
             "shapes:train for sharpness and landscape, as the papers measure on training data; "
             "shapes, the test split, otherwise)", group=SHARED, metavar="SPEC")
    num_images: int | None = option(help="images to use", group=SHARED, metavar="N")
    batch_size: int | None = option(help="images per batch", group=SHARED, metavar="B")
    seed: int = option(0, "seed for data subsets and directions", group=SHARED)
    device: str = option("auto", group=SHARED, choices=("auto", "cpu", "cuda"))
    out: Path | None = option(help="output folder (default: ./vitprobe-out)", group=SHARED,
                              recipe=False, metavar="DIR")
    format: str = option("png", "figure format", group=SHARED, choices=("png", "pdf", "svg"))
    quiet: bool = option(False, "no progress bars or status lines", group=SHARED, recipe=False)
    class_names: Path | None = option(
        help="the model's class names, one a line in its output order: class folders are matched "
             "to them by name", group=SHARED, metavar="FILE")
    input_size: list[int] | None = option(help="input size: S (square) or H W", group=INPUT,
                                          metavar="S")
    mean: list[float] | None = option(help="per-channel mean", group=INPUT, metavar="M")
    std: list[float] | None = option(help="per-channel std", group=INPUT, metavar="S")
    interpolation: str | None = option(help="resize interpolation", group=INPUT,
                                       choices=INTERPOLATIONS)
    crop_pct: float | None = option(help="centre-crop fraction (1.0: resize to the input size, "
                                         "no crop)", group=INPUT, metavar="F")
    in_chans: int | None = option(help="input channels (1 for grayscale)", group=INPUT, metavar="C")
    allow_download: bool = option(
        False, "let timm / Hugging Face download weights missing from the local cache", group=SHARED)
    # a recipe is a file people share: unpickling code is allowed from the command line only
    trust_checkpoint: bool = option(
        False, "allow unpickling code from .pth/.bin checkpoints (unsafe)", group=SHARED,
        recipe=False)

    def check(self) -> None:
        """Refuse values argparse lets through (a count below 1, ...) with a UserError; a
        command's options extend this with their own rules."""
        for name in ("num_images", "batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UserError(f"{flag(name)} must be positive, got {value}")
        if self.input_size is not None and len(self.input_size) not in (1, 2):
            raise UserError(f"--input-size takes S or H W, got {len(self.input_size)} values")
