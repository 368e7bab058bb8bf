"""The documentation and the code check each other.

- Every ```python block in docs/*.md and README.md runs, in a fresh namespace,
  without raising (the blocks assert what they claim). A block whose fence is
  preceded by the line ``<!-- not-tested -->`` is skipped. A page holding the
  line ``<!-- docs-test: needs contrib/NAME -->`` has its blocks run with that
  contrib distribution pip-installed (offline, into a temporary folder), as a
  reader who followed the page's install step has it.
- docs/hooks.md documents every hook of ``pruneframe.hookspecs`` with its exact
  signature (and the signature of the ``register`` callback it receives), and
  nothing else.
- Every hook is implemented by at least one built-in plugin.
"""
from __future__ import annotations

import contextlib
import inspect
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, NamedTuple

import pytest
import torch

import pruneframe
from pruneframe import hookspecs
from pruneframe.registry import loading

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
HOOKS_DOC = DOCS / "hooks.md"
NOT_TESTED = "<!-- not-tested -->"
_NEEDS = re.compile(r"^<!-- docs-test: needs (?P<dist>contrib/[A-Za-z0-9_.-]+) -->$", re.MULTILINE)

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`]*?)[ \t]*$")


class CodeBlock(NamedTuple):
    """One fenced ```python block: where it is and what it says."""

    path: Path
    line: int  # 1-based line of the opening fence
    source: str
    tested: bool
    needs: tuple[str, ...] = ()  # contrib distributions (``contrib/NAME``) its page says to install

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def needed_distributions(text: str) -> tuple[str, ...]:
    """The contrib distributions a page's examples need: its ``<!-- docs-test: needs contrib/NAME -->`` lines."""
    return tuple(match["dist"] for match in _NEEDS.finditer(text))


def code_blocks(path: Path) -> list[CodeBlock]:
    """Every ```python block of a Markdown file; other fenced blocks are skipped whole."""
    text = path.read_text(encoding="utf-8")
    needs = needed_distributions(text)
    lines = text.splitlines()
    found: list[CodeBlock] = []
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        indent, fence, info = opening["indent"], opening["fence"], opening["info"]
        end = i + 1
        while end < len(lines):
            closing = _FENCE.match(lines[end])
            if closing and closing["fence"][0] == fence[0] and len(closing["fence"]) >= len(fence) and not closing["info"]:
                break
            end += 1
        if end == len(lines):
            raise ValueError(f"{path}:{i + 1}: the fence {fence!r} is never closed")
        if info.split(maxsplit=1)[:1] == ["python"]:
            previous = next((lines[k].strip() for k in range(i - 1, -1, -1) if lines[k].strip()), "")
            body = [line[len(indent):] if line.startswith(indent) else line for line in lines[i + 1:end]]
            found.append(CodeBlock(path, i + 1, "\n".join(body) + "\n", previous != NOT_TESTED, needs))
        i = end + 1
    return found


def _documents() -> list[Path]:
    return sorted(DOCS.glob("*.md")) + ([README] if README.exists() else [])


BLOCKS = [block for path in _documents() for block in code_blocks(path) if block.tested]
# a block that needs a contrib distribution installs it: slow, like the contrib tests
_PARAMS = [pytest.param(b, id=b.id, marks=[pytest.mark.slow] if b.needs else []) for b in BLOCKS]


def test_the_docs_hold_runnable_examples() -> None:
    """The guides promise runnable examples; losing them all (a broken fence, a moved file) must fail."""
    for name, at_least in (("concepts.md", 2), ("writing-plugins.md", 3), ("pruning.md", 2), ("getting-started.md", 2),
                           ("language-models.md", 5)):
        assert len([b for b in BLOCKS if b.path == DOCS / name]) >= at_least, f"docs/{name} lost its examples"


def test_code_blocks_parses_fences_and_markers(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text(
        "text\n```python\nx = 1\n```\n\n<!-- not-tested -->\n\n```python\nraise SystemExit\n```\n"
        "````text\n```python\nnot code\n```\n````\n- item\n\n  ```python\n  y = 2\n  ```\n",
        encoding="utf-8",
    )
    blocks = code_blocks(doc)
    assert [(b.line, b.source, b.tested) for b in blocks] == [
        (2, "x = 1\n", True),
        (8, "raise SystemExit\n", False),
        (18, "y = 2\n", True),
    ]
    (tmp_path / "open.md").write_text("```python\nx = 1\n", encoding="utf-8")
    with pytest.raises(ValueError, match="never closed"):
        code_blocks(tmp_path / "open.md")


def test_a_page_names_the_contrib_distributions_its_examples_need(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text("# A page\n\n<!-- docs-test: needs contrib/pruneframe-transformers -->\n\n```python\nx = 1\n```\n"
                   "text <!-- docs-test: needs contrib/not-on-its-own-line -->\n", encoding="utf-8")
    [block] = code_blocks(doc)
    assert block.needs == ("contrib/pruneframe-transformers",)
    assert code_blocks(DOCS / "concepts.md")[0].needs == ()
    for path in _documents():
        for dist in needed_distributions(path.read_text(encoding="utf-8")):
            assert (ROOT / dist / "pyproject.toml").is_file(), f"{path.name} needs {dist}, which is not a distribution"


@pytest.fixture(scope="session")
def contrib_sites(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``site(dist)``: the contrib distribution ``dist`` pip-installed offline into a folder of its own, once per session."""
    from contrib_support import install_offline

    sites: dict[str, Path] = {}

    def site(dist: str) -> Path:
        if dist not in sites:
            sites[dist] = install_offline(ROOT / dist, tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("site"))
        return sites[dist]

    return site


@pytest.mark.parametrize("block", _PARAMS)
def test_doc_example_runs(block: CodeBlock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    # Padding with blank lines makes a traceback point at the Markdown file's own line numbers.
    code = compile("\n" * block.line + block.source, str(block.path), "exec")
    namespace: dict[str, Any] = {"__name__": "__doc_example__"}
    environ, path = dict(os.environ), list(sys.path)
    # a block may load plugins into the process-wide registry; later tests must not see them
    monkeypatch.setattr(loading, "_process_plugins", loading._process_plugins)
    monkeypatch.chdir(tmp_path)
    try:
        with contextlib.ExitStack() as installed:
            if block.needs:
                from contrib_support import installed_in_process

                site = request.getfixturevalue("contrib_sites")
                for dist in block.needs:
                    installed.enter_context(installed_in_process(site(dist), Path(dist).name.replace("-", "_")))
            with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
                exec(code, namespace)
    finally:
        os.environ.clear()
        os.environ.update(environ)
        sys.path[:] = path


# --- the hook reference ------------------------------------------------------------


class _Text(str):
    """An annotation kept as the text it was written as (hookspecs uses postponed annotations)."""

    def __repr__(self) -> str:
        return str(self)


def _as_written(annotation: Any) -> Any:
    if annotation is inspect.Parameter.empty:
        return annotation
    return _Text(annotation if isinstance(annotation, str) else inspect.formatannotation(annotation))


def signature_text(name: str, fn: Callable[..., Any], drop_self: bool = False) -> str:
    """``name(arg: Type, ...) -> Return``, with annotations exactly as written in the source."""
    sig = inspect.signature(fn)
    params = list(sig.parameters.values())[1 if drop_self else 0:]
    sig = sig.replace(
        parameters=[p.replace(annotation=_as_written(p.annotation)) for p in params],
        return_annotation=_as_written(sig.return_annotation),
    )
    return f"{name}{sig}"


def hook_specs() -> dict[str, Callable[..., Any]]:
    marker = f"{hookspecs.hookspec.project_name}_spec"
    return {name: fn for name, fn in vars(hookspecs).items() if inspect.isfunction(fn) and hasattr(fn, marker)}


def register_signature(spec: Callable[..., Any]) -> str | None:
    """The signature of the ``register`` callback a hook receives, when its annotation is a callable Protocol."""
    register = inspect.signature(spec).parameters.get("register")
    if register is None:
        return None
    annotation = register.annotation
    protocol = getattr(hookspecs, annotation, None) if isinstance(annotation, str) else annotation
    call = getattr(protocol, "__call__", None)
    if not isinstance(protocol, type) or not inspect.isfunction(call):
        return None
    return signature_text("register", call, drop_self=True)


def _hook_sections() -> dict[str, str]:
    """The ``## <hook name>`` sections of docs/hooks.md (``###`` subsections included), by hook name."""
    sections: dict[str, str] = {}
    current: str | None = None
    fence: str | None = None
    for line in HOOKS_DOC.read_text(encoding="utf-8").splitlines():
        marker = _FENCE.match(line)
        heading = re.match(r"^(#{1,6}) +(.+?)\s*$", line)
        if marker:
            if fence is None:
                fence = marker["fence"]
            elif marker["fence"][0] == fence[0] and len(marker["fence"]) >= len(fence) and not marker["info"]:
                fence = None
        elif fence is None and heading and len(heading[1]) <= 2:
            current = heading[2].strip("`") if len(heading[1]) == 2 else None
            if current is not None:
                sections[current] = ""
            continue
        if current is not None:
            sections[current] += line + "\n"
    return {name: text for name, text in sections.items() if name.startswith("pruneframe_")}


def test_signature_text_matches_the_documented_format() -> None:
    assert signature_text("pruneframe_layer_pruners", hookspecs.pruneframe_layer_pruners) == (
        "pruneframe_layer_pruners(register: RegisterLayerPruner) -> None"
    )


def test_there_are_hooks_to_document() -> None:
    assert {"pruneframe_layer_pruners", "pruneframe_op_handlers"} <= set(hook_specs())


@pytest.mark.parametrize("name", sorted(hook_specs()))
def test_hook_is_documented_with_its_exact_signature(name: str) -> None:
    sections = _hook_sections()
    assert name in sections, f"docs/hooks.md has no '## {name}' section"
    lines = {line.strip() for line in sections[name].splitlines()}
    spec = hook_specs()[name]
    expected = signature_text(name, spec)
    shown = expected in lines
    assert shown, f"the '## {name}' section of docs/hooks.md must show the signature line\n    {expected}"
    register = register_signature(spec)
    shown = register is None or register in lines
    assert shown, f"the '## {name}' section of docs/hooks.md must show the register callback\n    {register}"


def test_no_documented_hook_is_missing_from_hookspecs() -> None:
    unknown = set(_hook_sections()) - set(hook_specs())
    assert not unknown, f"docs/hooks.md documents hooks that pruneframe.hookspecs does not define: {sorted(unknown)}"


def test_every_hook_is_implemented_by_a_builtin_plugin() -> None:
    builtins = [p for p in pruneframe.get_registry().plugins if p.builtin]
    assert builtins, "no built-in plugin is loaded: is pruneframe installed (pip install -e .)?"
    used = {hook for plugin in builtins for hook in plugin.hooks}
    unused = set(hook_specs()) - used
    assert not unused, f"hooks no built-in plugin implements (a hook nobody implements is a defect): {sorted(unused)}"
