"""``pruneframe plugins``: framework plugins are listed from metadata without importing them, truthfully marked; --load imports them."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import subprocess_env
from pruneframe.app.plugins_command import listing


def _fresh(*args: str) -> tuple[list[dict], bool]:
    """``pruneframe plugins ARGS`` in a fresh process: the listing, and whether torchvision got imported."""
    script = ("import json, sys\nfrom pruneframe.app.cli import main\nimport io, contextlib\nout = io.StringIO()\n"
              f"with contextlib.redirect_stdout(out):\n    main(['plugins', *{list(args)!r}])\n"
              "print(json.dumps([json.loads(out.getvalue()), 'torchvision' in sys.modules]))\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=subprocess_env())
    assert proc.returncode == 0, proc.stderr
    listed, imported = json.loads(proc.stdout.strip().splitlines()[-1])
    return listed, imported


@pytest.mark.slow
def test_framework_plugins_are_listed_unloaded_without_importing_their_framework() -> None:
    listed, imported = _fresh()
    assert not imported, "listing the plugins imported torchvision"
    plugins = {p["name"]: p for p in listed}
    torchvision_plugin = plugins["torchvision_models"]
    assert torchvision_plugin["loaded"] is False and torchvision_plugin["frameworks"] == ["torchvision"]
    assert torchvision_plugin["module"] == "pruneframe.plugins.torchvision_models" and torchvision_plugin["distribution"] == "pruneframe"
    assert "not loaded: it is imported once torchvision is in use; `pruneframe plugins --load`" in torchvision_plugin["note"]
    assert "hooks" not in torchvision_plugin, "an unloaded plugin's hooks are not known, so none are claimed"
    assert plugins["conv"]["loaded"] is True and "torch.nn.modules.conv.Conv2d" in plugins["conv"]["module_types"]


@pytest.mark.slow
def test_load_imports_them_and_lists_what_they_serve() -> None:
    listed, imported = _fresh("--load")
    assert imported
    torchvision_plugin = next(p for p in listed if p["name"] == "torchvision_models")
    assert torchvision_plugin["loaded"] is True and torchvision_plugin["hooks"]


def test_a_framework_already_in_use_is_listed_loaded() -> None:
    import torchvision  # noqa: F401  (in use in this process: its plugin is loaded, and listed so)

    plugins = {p["name"]: p for p in listing(load=False)}
    assert plugins["torchvision_models"]["loaded"] is True and "note" not in plugins["torchvision_models"]
    assert all("loaded" in p for p in plugins.values())
