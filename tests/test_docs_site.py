"""The documentation site builds with ``mkdocs build --strict``, lists every page, and documents the live command line.

- mkdocs.yml's nav lists every docs/*.md page exactly once, and nothing else;
- the strict build passes, and it does fail on a broken link, a broken anchor
  and a page left out of the nav (so "it builds" means something);
- the CLI reference page is rendered from pruneframe's argparse parser at build
  time: every subcommand and every option the parser has is on the page.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from pruneframe.app.cli_reference import commands, pruneframe_parser, render_reference

pytest.importorskip("material", reason="mkdocs-material is a test extra: pip install -e '.[test]'")
import markdown  # noqa: E402 - installed with mkdocs
import yaml  # noqa: E402 - installed with mkdocs
from mkdocs.exceptions import PluginError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
CONFIG = ROOT / "mkdocs.yml"


def nav_pages(nav: list) -> list[str]:
    """Every page path of an mkdocs nav, depth first (sections are lists, entries ``{title: path}`` or a bare path)."""
    pages: list[str] = []
    for entry in nav:
        values = entry.values() if isinstance(entry, dict) else [entry]
        for value in values:
            pages += nav_pages(value) if isinstance(value, list) else [value]
    return pages


def build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # mkdocs-material's end-of-life banner
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config), "--site-dir", str(site)],
                          check=False, cwd=config.parent, env=env, capture_output=True, text=True, timeout=300)


def test_nav_pages_flattens_sections() -> None:
    nav = [{"Home": "index.md"}, {"Section": [{"A": "a.md"}, "b.md", {"Inner": [{"C": "c.md"}]}]}]
    assert nav_pages(nav) == ["index.md", "a.md", "b.md", "c.md"]


def test_the_nav_lists_every_page_once_and_nothing_else() -> None:
    config = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))
    listed = nav_pages(config["nav"])
    assert len(listed) == len(set(listed)), f"pages listed twice in mkdocs.yml: {sorted({p for p in listed if listed.count(p) > 1})}"
    pages = sorted(p.name for p in DOCS.glob("*.md"))
    assert sorted(listed) == pages, (
        f"mkdocs.yml's nav and docs/*.md differ: not in the nav {sorted(set(pages) - set(listed))}, "
        f"in the nav but no such page {sorted(set(listed) - set(pages))}"
    )
    assert listed[0] == "index.md"


def test_no_plugin_that_downloads_at_build_time() -> None:
    config = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))
    plugins = [p if isinstance(p, str) else next(iter(p)) for p in config.get("plugins", [])]
    assert not {"social", "privacy", "material/social", "material/privacy"} & set(plugins)


def test_the_site_builds_strictly_with_the_cli_reference(tmp_path: Path) -> None:
    site = tmp_path / "site"
    result = build(CONFIG, site)
    assert result.returncode == 0, result.stderr[-6000:]
    for page in ("index.html", "getting-started/index.html", "language-models/index.html", "hooks/index.html",
                 "search/search_index.json"):
        assert (site / page).is_file(), f"the site has no {page}"
    assert not (site / "hooks_mkdocs").exists(), "the build hook was published as a page asset"
    cli = (site / "cli" / "index.html").read_text(encoding="utf-8")
    assert "<!-- cli-reference" not in cli, "the CLI reference was not rendered into docs/cli.md"
    for line, parser, _ in commands(pruneframe_parser()):
        assert f"<code>{line}</code>" in cli, f"the CLI reference has no section for {line!r}"
        for action in parser._actions:
            for option in action.option_strings:
                assert f"<code>{option}" in cli, f"the CLI reference does not document {line} {option}"


def test_a_broken_link_an_anchor_or_a_page_outside_the_nav_fails_the_build(tmp_path: Path) -> None:
    copy = tmp_path / "project"
    shutil.copytree(DOCS, copy / "docs", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(CONFIG, copy / "mkdocs.yml")
    index = copy / "docs" / "index.md"
    index.write_text(index.read_text(encoding="utf-8") + "\n[gone](no-such-page.md) and [bad anchor](concepts.md#no-such-heading)\n",
                     encoding="utf-8")
    (copy / "docs" / "orphan.md").write_text("# Not in the nav\n", encoding="utf-8")
    result = build(copy / "mkdocs.yml", tmp_path / "site")
    assert result.returncode != 0
    assert "no-such-page.md" in result.stderr
    assert "no-such-heading" in result.stderr
    assert "orphan.md" in result.stderr


def _toy_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tool", description="A tool.")
    parser.add_argument("--version", action="version", version="1")
    sub = parser.add_subparsers(dest="command", required=True)
    graph = sub.add_parser("graph", aliases=["g"], help="draw the graph", description="Draw the dependency graph of MODEL.")
    graph.add_argument("model", help="what to draw")
    graph.add_argument("--format", choices=["dot", "mermaid"], default="dot", help="dot|mermaid (default %(default)s)")
    graph.add_argument("--out", required=True, metavar="<file>", help="where to write it")
    graph.add_argument("--layout", metavar="lr|tb", help="direction: *lr* or [tb], a_b_c")
    inspect = sub.add_parser("inspect", help="show the groups")
    deeper = inspect.add_subparsers(dest="what")
    deeper.add_parser("groups", help="every group").add_argument("--limit", type=int, default=10)
    return parser


def test_the_reference_has_every_command_and_option_of_a_parser() -> None:
    text = render_reference(_toy_parser())
    headings = [line for line in text.splitlines() if line.startswith("#")]
    # every command once (the alias g is graph again), depth first, in the order they were added
    assert headings == ["## `tool`", "## `tool graph`", "## `tool inspect`", "## `tool inspect groups`"]
    assert "- `tool graph`: draw the graph" in text and "- `tool inspect`: show the groups" in text
    assert "Draw the dependency graph of MODEL." in text  # a description wins over the one-line help
    assert "show the groups" in text.split("## `tool inspect`")[1]  # no description: the help line
    assert "| `--format {dot,mermaid}` | `dot` | dot\\|mermaid (default dot) |" in text  # the cell does not split
    assert "| `--out <file>` | required | where to write it |" in text  # in a code span: Markdown escapes the <
    assert "| `model` | required | what to draw |" in text
    assert "| `--limit LIMIT` | `10` |  |" in text
    assert "usage: tool graph [-h] [--format {dot,mermaid}] --out <file> [--layout lr|tb] model" in text
    # as the site renders it: no cell splits at a |, no raw HTML
    rows = [" ".join(row.split()) for row in re.findall(r"<tr>.*?</tr>", markdown.markdown(text, extensions=["tables"]), re.DOTALL)]
    assert "<tr> <td><code>--format {dot,mermaid}</code></td> <td><code>dot</code></td> <td>dot|mermaid (default dot)</td> </tr>" in rows
    assert "<tr> <td><code>--out &lt;file&gt;</code></td> <td>required</td> <td>where to write it</td> </tr>" in rows
    assert "<tr> <td><code>--layout lr|tb</code></td> <td></td> <td>direction: *lr* or [tb], a_b_c</td> </tr>" in rows


def test_the_reference_documents_the_real_parser_and_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    parser = pruneframe_parser()
    assert capsys.readouterr() == ("", "")
    names = [line for line, _, _ in commands(parser)]
    assert names[0] == "pruneframe"
    assert {"pruneframe prune", "pruneframe plugins", "pruneframe inspect", "pruneframe graph"} <= set(names)
    text = render_reference(parser)
    assert "| `--ratio RATIO` | `0.5` |" in text


def _hook_module():
    spec = importlib.util.spec_from_file_location("cli_reference_hook", DOCS / "hooks_mkdocs" / "cli_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_build_hook_fills_the_cli_page_and_refuses_one_without_the_marker() -> None:
    hook = _hook_module()
    page = SimpleNamespace(file=SimpleNamespace(src_uri="cli.md"))
    other = SimpleNamespace(file=SimpleNamespace(src_uri="concepts.md"))
    assert hook.MARKER in (DOCS / "cli.md").read_text(encoding="utf-8")
    filled = hook.on_page_markdown(f"# CLI\n\n{hook.MARKER}\n", page, None, None)
    assert "## `pruneframe prune`" in filled and hook.MARKER not in filled
    assert hook.on_page_markdown(hook.MARKER, other, None, None) == hook.MARKER  # other pages are left alone
    with pytest.raises(PluginError, match="exactly once"):
        hook.on_page_markdown("# CLI\n\nno marker\n", page, None, None)
