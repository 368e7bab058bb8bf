"""mkdocs hook: fill docs/cli.md with the command-line reference rendered from pruneframe's argparse parser.

The page holds the line ``MARKER``; at build time it is replaced by
``pruneframe.app.cli_reference.render_reference`` of the live parser, so every
subcommand and flag that exists is documented and none that is gone. A page
without the marker fails the build rather than shipping without a reference.
"""
from __future__ import annotations

from mkdocs.exceptions import PluginError

from pruneframe.app.cli_reference import pruneframe_parser, render_reference

PAGE = "cli.md"
MARKER = "<!-- cli-reference: generated from the parser at build time -->"


def on_page_markdown(markdown: str, page, config, files) -> str:
    if page.file.src_uri != PAGE:
        return markdown
    if markdown.count(MARKER) != 1:
        raise PluginError(f"docs/{PAGE} must hold the line {MARKER!r} exactly once: the CLI reference is rendered there")
    return markdown.replace(MARKER, render_reference(pruneframe_parser()))
