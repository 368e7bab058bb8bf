"""Fixtures and helpers the test modules share: plugin environments, fake installed distributions, clean subprocesses."""
from __future__ import annotations

import importlib
import os
import sys
import textwrap
from pathlib import Path
from typing import Iterator, Protocol

import pytest

import pruneframe
from pruneframe.registry import ENTRY_POINT_GROUP, FRAMEWORK_GROUP

# pruneframe's plugin-selection variables: a test must find plugins as a fresh user would
PLUGIN_ENV = ("PRUNEFRAME_PLUGINS", "PRUNEFRAME_DISABLE_PLUGINS", "PRUNEFRAME_STRICT_PLUGINS")


def subprocess_env(**extra: str) -> dict[str, str]:
    """The current environment without plugin selection, so a developer's settings cannot change the outcome."""
    env = {k: v for k, v in os.environ.items() if k not in PLUGIN_ENV}
    env.update(extra)
    return env


@pytest.fixture
def no_plugin_selection(monkeypatch: pytest.MonkeyPatch) -> None:
    """build_registry() reads the live environment: start from "load everything, leniently"."""
    for var in PLUGIN_ENV:
        monkeypatch.delenv(var, raising=False)


class FakeDistributions(Protocol):
    def __call__(self, dist: str, entry_name: str, module: str, source: str, version: str = "0.1",
                 frameworks: str | None = None) -> None: ...


@pytest.fixture
def fake_dist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeDistributions]:
    """Write installed-looking distributions into ``tmp_path`` and put it first on ``sys.path``.

    ``frameworks`` declares the plugin a framework plugin (loaded only once that
    module is in use). Modules they import are dropped from ``sys.modules``
    afterwards: the next test writes different code under the same name.
    """
    pruneframe.get_registry()  # load the process-wide registry first, while sys.path is still clean
    monkeypatch.syspath_prepend(str(tmp_path))
    modules: list[str] = []

    def make(dist: str, entry_name: str, module: str, source: str, version: str = "0.1",
             frameworks: str | None = None) -> None:
        info = tmp_path / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        entries = f"[{ENTRY_POINT_GROUP}]\n{entry_name} = {module}\n"
        if frameworks is not None:
            entries += f"\n[{FRAMEWORK_GROUP}]\n{entry_name} = {frameworks}\n"
        (info / "entry_points.txt").write_text(entries)
        (tmp_path / f"{module}.py").write_text(textwrap.dedent(source))
        modules.append(module)
        importlib.invalidate_caches()  # the directory listing was cached before these files existed

    yield make
    for module in modules:
        sys.modules.pop(module, None)
