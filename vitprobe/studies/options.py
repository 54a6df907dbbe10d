"""Recipe keys as command-line options: find each key's argparse action, check, convert.

A recipe key ``top_k`` (or ``top-k``) is the option ``--top-k`` of its command; ``models``
is the repeatable ``--model``. Values are checked against the option's own argparse
definition (type, choices, flag, number of values), so a recipe accepts exactly what the
command line accepts.
"""

from __future__ import annotations

import argparse
from typing import Any

ALIASES = {"models": "--model"}
NOT_IN_RECIPES = {"--out", "--quiet", "--help"}


def command_parsers() -> dict[str, argparse.ArgumentParser]:
    """The argparse subparser of every installed command, by command name."""
    from vitprobe.cli import build_parser, discover_commands

    parser = build_parser(discover_commands())
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(subparsers.choices)


def option_string(key: str) -> str:
    return ALIASES.get(key, "--" + key.replace("_", "-"))


def find_action(parser: argparse.ArgumentParser, key: str) -> argparse.Action | None:
    option = option_string(key)
    if option in NOT_IN_RECIPES:
        return None
    return parser._option_string_actions.get(option)


def recipe_keys(parser: argparse.ArgumentParser) -> list[str]:
    """The keys a recipe section may use for this parser's options."""
    keys = []
    for action in parser._actions:
        long = [s for s in action.option_strings if s.startswith("--") and s not in NOT_IN_RECIPES]
        if long:
            key = "models" if long[0] == "--model" else long[0][2:].replace("-", "_")
            keys.append(key)
    return keys


def _is_flag(action: argparse.Action) -> bool:
    return isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction,
                               argparse.BooleanOptionalAction))


def _takes_many(action: argparse.Action) -> bool:
    return (isinstance(action, argparse._AppendAction) or action.nargs in ("+", "*")
            or (isinstance(action.nargs, int) and action.nargs > 1))


def _describe(kind: Any) -> str:
    return {int: "an integer", float: "a number"}.get(kind, "a string")


def check_value(action: argparse.Action, value: Any) -> str | None:
    """Why ``value`` cannot be given to ``action`` (None if it can)."""
    if _is_flag(action):
        return None if isinstance(value, bool) else "expects true or false"
    values = value if isinstance(value, list) else [value]
    if isinstance(value, list) and not _takes_many(action):
        return "takes one value, not a list"
    if isinstance(action.nargs, int) and action.nargs > 1 and len(values) != action.nargs:
        return f"takes {action.nargs} values, got {len(values)}"
    if _takes_many(action) and not values:
        return "needs at least one value"
    kind = action.type or str
    for item in values:
        if isinstance(item, (bool, dict, list)) or (kind is int and not isinstance(item, int)) or (
                kind is float and not isinstance(item, (int, float))):
            return f"expects {_describe(kind)}" + (" or a list of them" if _takes_many(action) else "") \
                + f", got {item!r}"
        try:
            converted = kind(str(item)) if callable(kind) else item
        except (TypeError, ValueError, argparse.ArgumentTypeError) as error:
            return f"cannot take {item!r} ({error})"
        if action.choices is not None and converted not in action.choices:
            return f"must be one of {', '.join(map(str, action.choices))}, got {item!r}"
    return None


def to_argv(action: argparse.Action, value: Any) -> list[str]:
    """The command-line tokens that give ``value`` to ``action``."""
    option = next(s for s in action.option_strings if s.startswith("--"))
    if isinstance(action, argparse.BooleanOptionalAction):
        return [option if value else "--no-" + option[2:]]
    if _is_flag(action):
        wanted = isinstance(action, argparse._StoreTrueAction)
        return [option] if value is wanted else []
    values = [str(v) for v in (value if isinstance(value, list) else [value])]
    if isinstance(action, argparse._AppendAction):
        return [token for v in values for token in (option, v)]
    if len(values) == 1 and values[0].startswith("-"):
        return [f"{option}={values[0]}"]  # else argparse would read "-1:1" as an option
    return [option, *values]
