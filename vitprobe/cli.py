"""``python -m vitprobe <command>``: one subcommand per analysis, with shared options.

Subcommands are discovered from ``vitprobe/<package>/command.py`` modules, each of which
defines ``COMMANDS``: a list of :class:`vitprobe.command.Command`.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import pkgutil
import re
import sys
import traceback
from pathlib import Path

import torch

import vitprobe
from vitprobe import distributed
from vitprobe.command import Command, RunContext
from vitprobe.errors import UserError
from vitprobe.models.input_config import INTERPOLATIONS
from vitprobe.progress import set_quiet

ORDER = ("sharpness", "attention", "receptive-field", "landscape", "evaluate", "throughput",
         "run", "report", "demo", "models")
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


def shared_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("shared options")
    group.add_argument("--model", action="append", metavar="SPEC",
                       help="model spec, repeatable (see `vitprobe models`); default: the demo zoo")
    group.add_argument("--model-args", action=ModelArgs, nargs="+", metavar="KEY=VALUE",
                       help="constructor arguments of the --model before it (timm, torchvision or "
                            "py: builder), values as Python literals, e.g. img_size=32 num_classes=10")
    group.add_argument("--data", metavar="SPEC",
                       help="'shapes' or 'shapes:train' (embedded), an image folder, a glob or a file "
                            "(default: shapes:train for sharpness and landscape, as the papers measure "
                            "on training data; shapes, the test split, otherwise)")
    group.add_argument("--num-images", type=int, metavar="N", help="images to use")
    group.add_argument("--batch-size", type=int, metavar="B", help="images per batch")
    group.add_argument("--seed", type=int, default=0, help="seed for data subsets and directions")
    group.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    group.add_argument("--out", type=Path, default=Path("vitprobe-out"), metavar="DIR",
                       help="output folder (default: ./vitprobe-out)")
    group.add_argument("--format", default="png", choices=("png", "pdf", "svg"), help="figure format")
    group.add_argument("--quiet", action="store_true", help="no progress bars or status lines")
    group.add_argument("--class-names", type=Path, metavar="FILE",
                       help="the model's class names, one a line in its output order: class folders "
                            "are matched to them by name")
    inputs = parent.add_argument_group(
        "input configuration (overrides the model's own; needed for models that have none)")
    inputs.add_argument("--input-size", type=int, nargs="+", metavar="S",
                        help="input size: S (square) or H W")
    inputs.add_argument("--mean", type=float, nargs="+", metavar="M", help="per-channel mean")
    inputs.add_argument("--std", type=float, nargs="+", metavar="S", help="per-channel std")
    inputs.add_argument("--interpolation", choices=INTERPOLATIONS, help="resize interpolation")
    inputs.add_argument("--crop-pct", type=float, metavar="F",
                        help="centre-crop fraction (1.0: resize to the input size, no crop)")
    inputs.add_argument("--in-chans", type=int, metavar="C", help="input channels (1 for grayscale)")
    group.add_argument("--allow-download", action="store_true",
                       help="let timm / Hugging Face download weights missing from the local cache")
    group.add_argument("--trust-checkpoint", action="store_true",
                       help="allow unpickling code from .pth/.bin checkpoints (unsafe)")
    return parent


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


class OneLineParser(argparse.ArgumentParser):
    """argparse, whose errors are one line (``vitprobe sharpness: error: ...``), not the usage."""

    def error(self, message: str):
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(commands: dict[str, Command]) -> argparse.ArgumentParser:
    parser = OneLineParser(prog="vitprobe", description="Diagnostics for trained vision models.")
    parser.add_argument("--version", action="version", version=f"vitprobe {vitprobe.__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                       parser_class=OneLineParser)
    parent = shared_options()
    for command in commands.values():
        sub = subparsers.add_parser(command.name, parents=[parent], help=command.help,
                                    description=command.help)
        command.add_arguments(sub)
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
    """Run one command; return its exit status (2 for a user error, 1 for an internal one)."""
    argv = attach_negative_values(list(sys.argv[1:] if argv is None else argv))
    commands = discover_commands()
    try:
        args = build_parser(commands).parse_args(argv)
    except SystemExit as exit_:  # --help, --version, or a one-line argument error
        return exit_.code if isinstance(exit_.code, int) else EXIT_USER_ERROR
    command = commands[args.command]
    set_quiet(args.quiet)
    ctx: RunContext | None = None
    try:
        device = resolve_device(args.device)
        distributed.init_from_env(device)
        torch.manual_seed(args.seed)
        ctx = RunContext(command=command, args=args, argv=["vitprobe", *argv], device=device,
                         out=args.out)
        ctx.check_shared_options()
        command.run(ctx)
        if ctx.failures:
            _close(ctx, "partial")
            print(f"vitprobe {args.command}: {len(ctx.failures)} of {len(ctx.model_specs)} models "
                  "failed (see above)", file=sys.stderr)
            return EXIT_USER_ERROR
        _close(ctx, "complete")
        return 0
    except UserError as error:
        print(f"vitprobe {args.command}: error: {error}", file=sys.stderr)
        _close(ctx, "user error")
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"vitprobe {args.command}: interrupted; rows computed so far are in {args.out}",
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
