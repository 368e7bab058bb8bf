"""The command-line reference as Markdown, rendered from the argparse parser itself so it never goes stale.

``render_reference(parser)`` writes one section per command — the program,
then every subcommand the parser has (recursively), in the order they were
added — with its usage, description and a table of its arguments.
``pruneframe_parser()`` is the parser ``pruneframe.app.cli.main`` builds; the
docs site's build hook renders it into docs/cli.md.
"""
from __future__ import annotations

import argparse
import html
import re
from collections.abc import Iterator

USAGE_WIDTH = 100  # usage lines are wrapped at this width, not the terminal's, so the page is the same wherever it is built


def pruneframe_parser() -> argparse.ArgumentParser:
    """The parser of the ``pruneframe`` command, exactly as ``cli.main`` builds it."""
    from .. import __version__
    from .arguments import build_parser

    return build_parser(__version__)


def commands(parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.ArgumentParser, str | None]]:
    """``(command line, parser, one-line help)`` for the program and every subcommand under it, depth first, aliases once."""
    yield parser.prog, parser, None
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        helps = {choice.dest: choice.help for choice in action._choices_actions}
        seen: set[int] = set()
        for name, sub in action.choices.items():
            if id(sub) in seen:
                continue
            seen.add(id(sub))
            for line, nested, summary in commands(sub):
                yield line, nested, helps.get(name) if nested is sub else summary


_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]|])")


def _cell(text: str) -> str:
    """Help text as it was written, inside a Markdown table cell: one line, no HTML, no emphasis, links or cell breaks."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", html.escape(" ".join(text.split()), quote=False))


def _code(text: str) -> str:
    """An inline code span (a ``|`` in it does not split a table cell: Python-Markdown's tables skip code spans)."""
    return f"`{text}`"


def _names(action: argparse.Action, formatter: argparse.HelpFormatter) -> str:
    if not action.option_strings:
        return _code(formatter._metavar_formatter(action, action.dest)(1)[0])
    if action.nargs == 0:
        return ", ".join(_code(option) for option in action.option_strings)
    value = formatter._format_args(action, action.dest.upper())
    return ", ".join(_code(f"{option} {value}") for option in action.option_strings)


def _default(action: argparse.Action) -> str:
    if action.required or action.nargs == 0 or action.default in (None, argparse.SUPPRESS, []):
        return "required" if action.required else ""
    return _code(str(action.default))


def _arguments_table(parser: argparse.ArgumentParser) -> list[str]:
    formatter = parser._get_formatter()
    rows = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) or action.help == argparse.SUPPRESS:
            continue
        helped = formatter._expand_help(action) if action.help else ""
        rows.append(f"| {_names(action, formatter)} | {_default(action)} | {_cell(helped)} |")
    if not rows:
        return []
    return ["| argument | default | what it does |", "| --- | --- | --- |", *rows, ""]


def _subcommand_list(parser: argparse.ArgumentParser) -> list[str]:
    lines = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                lines.append(f"- `{parser.prog} {choice.dest}`: {_cell(choice.help or '')}")
    return lines + [""] if lines else []


def _usage(parser: argparse.ArgumentParser) -> str:
    formatter = parser.formatter_class(prog=parser.prog, width=USAGE_WIDTH)
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups)
    return formatter.format_help().strip()


def render_reference(parser: argparse.ArgumentParser, heading_level: int = 2) -> str:
    """Markdown for ``parser`` and all its subcommands: a heading per command, its usage, description and arguments."""
    hashes = "#" * heading_level
    out: list[str] = []
    for line, command, summary in commands(parser):
        out += [f"{hashes} `{line}`", ""]
        text = command.description or summary
        if text:
            out += [_cell(text), ""]
        out += ["```text", _usage(command), "```", ""]
        out += _subcommand_list(command)
        out += _arguments_table(command)
    return "\n".join(out).rstrip() + "\n"
