"""``python -m vitprobe <command>``: one subcommand per analysis, with shared options.

Subcommands are discovered from ``vitprobe/<package>/command.py`` modules, each of which
defines ``COMMANDS``: a list of :class:`vitprobe.command.Command`.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import pkgutil
import re
import sys
import traceback

import torch

import vitprobe
from vitprobe import distributed
from vitprobe.command import AllModelsFailed, Command, RunContext
from vitprobe.errors import UserError
from vitprobe.options import SharedOptions, add_options, from_namespace, to_argv
from vitprobe.progress import set_quiet

ORDER = ("sharpness", "attention", "map-quality", "receptive-field", "landscape", "similarity", "frequency",
         "evaluate", "corruptions", "throughput", "run", "report", "demo", "models")
EXIT_USER_ERROR = 2


def discover_commands() -> dict[str, Command]:
    """Every ``COMMANDS`` entry of every ``vitprobe.<package>.command`` module, in help order."""
    found: dict[str, Command] = {}
    for info in pkgutil.iter_modules(vitprobe.__path__):
        if not info.ispkg:
            continue
        name = f"vitprobe.{info.name}.command"
        if importlib.util.find_spec(name) is None:
            continue
        for command in importlib.import_module(name).COMMANDS:
            found[command.name] = command
    rank = {name: i for i, name in enumerate(ORDER)}
    return dict(sorted(found.items(), key=lambda item: rank.get(item[0], len(ORDER))))


class OneLineParser(argparse.ArgumentParser):
    """argparse, whose errors are one line (``vitprobe sharpness: error: ...``), not the usage."""

    def error(self, message: str):
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(commands: dict[str, Command]) -> argparse.ArgumentParser:
    parser = OneLineParser(prog="vitprobe", description="Diagnostics for trained vision models.")
    parser.add_argument("--version", action="version", version=f"vitprobe {vitprobe.__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                       parser_class=OneLineParser)
    for command in commands.values():
        sub = subparsers.add_parser(command.name, help=command.help, description=command.help)
        add_options(sub, command.options, command.name)
    return parser


def resolve_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for, but torch sees no CUDA device")
    if choice == "cpu" or (choice == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if distributed.launched_by_torchrun():
        import os

        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cuda")


NEGATIVE_RANGE = re.compile(r"^-[\d.]+(e[+-]?\d+)?:-?[\d.]+(e[+-]?\d+)?$")


def attach_negative_values(argv: list[str]) -> list[str]:
    """``--span -1:1`` becomes ``--span=-1:1``: argparse takes plain negative numbers as values,
    but would take a negative range like ``-1:1`` for an option."""
    out: list[str] = []
    for token in argv:
        if out and NEGATIVE_RANGE.match(token) and out[-1].startswith("--") and "=" not in out[-1]:
            out[-1] = f"{out[-1]}={token}"
        else:
            out.append(token)
    return out


def main(argv: list[str] | None = None) -> int:
    """Run one command line; return its exit status (2 for a user error, 1 for an internal one)."""
    argv = attach_negative_values(list(sys.argv[1:] if argv is None else argv))
    commands = discover_commands()
    try:
        args = build_parser(commands).parse_args(argv)
    except SystemExit as exit_:  # --help, --version, or a one-line argument error
        return exit_.code if isinstance(exit_.code, int) else EXIT_USER_ERROR
    command = commands[args.command]
    return execute(command, from_namespace(command.options, args), argv)


def command_line(name: str, options: SharedOptions) -> list[str]:
    """The ``vitprobe`` arguments that run command ``name`` with ``options``."""
    return [name, *to_argv(options)]


def run_command(name: str, options: SharedOptions) -> int:
    """Run command ``name`` with an options object, in-process (as the study runner does); the
    run's record names the command line that reproduces it."""
    return execute(discover_commands()[name], options, command_line(name, options))


def execute(command: Command, options: SharedOptions, argv: list[str]) -> int:
    """Run ``command`` with ``options``; return its exit status. ``argv`` is what the run's
    record shows as its command line."""
    set_quiet(options.quiet)
    ctx: RunContext | None = None
    try:
        device = resolve_device(options.device)
        distributed.init_from_env(device)
        torch.manual_seed(options.seed)
        ctx = RunContext(command=command, options=options, argv=["vitprobe", *argv], device=device)
        ctx.check_options()
        command.run(ctx)
        if ctx.failures:
            _close(ctx, "partial")
            print(f"vitprobe {command.name}: {len(ctx.failures)} of {len(ctx.model_specs)} models "
                  "failed (see above)", file=sys.stderr)
            return EXIT_USER_ERROR
        _close(ctx, "complete")
        return 0
    except AllModelsFailed as error:  # each model's error is on its own line already
        print(f"vitprobe {command.name}: {error}", file=sys.stderr)
        _close(ctx, "failed")
        return EXIT_USER_ERROR
    except UserError as error:
        print(f"vitprobe {command.name}: error: {error}", file=sys.stderr)
        _close(ctx, "failed")
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        where = ctx.out if ctx is not None else "the out folder"
        print(f"vitprobe {command.name}: interrupted; rows computed so far are in {where}",
              file=sys.stderr)
        _close(ctx, "interrupted")
        return 130
    except Exception:  # an internal failure: keep the traceback for the bug report
        traceback.print_exc()
        _close(ctx, "failed")
        return 1


def _close(ctx: RunContext | None, status: str) -> None:
    """Write the run's final record; a failure to write is reported, never raised."""
    if ctx is None:
        return
    try:
        ctx.end(status)
    except (UserError, OSError) as error:
        print(f"vitprobe {ctx.command.name}: could not write the run record: {error}", file=sys.stderr)


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
