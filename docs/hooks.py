"""mkdocs hook: pages name what they include from the code and the README, so nothing is written
twice. ``<!-- options -->``: every command's ``--help``; ``<!-- spec-forms -->``: the model spec
forms of ``vitprobe.models.SPEC_FORMS``; ``<!-- readme: HEADING -->``: that README section."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _options() -> str:
    from vitprobe.cli import build_parser, discover_commands

    commands = discover_commands()
    parser = build_parser(commands)
    subparsers = next(action for action in parser._actions if action.dest == "command")
    parts = []
    for name, sub in subparsers.choices.items():
        sub.prog = f"vitprobe {name}"
        parts += [f"## `vitprobe {name}`", "", commands[name].help, "", "```text", sub.format_help().rstrip(), "```", ""]
    return "\n".join(parts)


def _spec_forms() -> str:
    from vitprobe.models import SPEC_FORMS

    rows = ["| spec | meaning |", "| --- | --- |"]
    return "\n".join(rows + [f"| `{form}` | {meaning} |" for form, meaning in SPEC_FORMS])


def _readme(heading: str) -> str:
    text = README.read_text()
    start = text.index(f"\n{heading}\n")
    level = heading.split()[0]
    following = re.search(rf"\n#{{1,{len(level)}}} ", text[start + len(heading) + 2:])
    end = start + len(heading) + 2 + following.start() if following else len(text)
    return text[start + len(heading) + 2:end].strip()


def on_page_markdown(markdown: str, **_: object) -> str:
    markdown = markdown.replace("<!-- options -->", _options()).replace("<!-- spec-forms -->", _spec_forms())
    return re.sub(r"<!-- readme: (.+?) -->", lambda m: _readme(m.group(1)), markdown)
