"""The wheel installs the core and the built-in plugins as pruneframe.plugins, never a top-level `plugins`."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # Built from a copy of the tracked files: a stale build/ folder in the checkout would fill in what the config misses.
    source = tmp_path_factory.mktemp("source")
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for name in tracked:
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(out), str(source)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    (found,) = out.glob("pruneframe-*.whl")
    return found


def test_wheel_maps_plugins_under_pruneframe(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"pruneframe", next(t for t in tops if t.endswith(".dist-info"))}, tops
    plugin_files = sorted(p.name for p in (ROOT / "plugins").glob("*.py"))
    for name in plugin_files:
        assert f"pruneframe/plugins/{name}" in names
    assert "pruneframe/py.typed" in names


def test_wheel_declares_every_builtin_plugin_as_an_entry_point(wheel: Path) -> None:
    archive = zipfile.ZipFile(wheel)
    (entry_points,) = [n for n in archive.namelist() if n.endswith(".dist-info/entry_points.txt")]
    text = archive.read(entry_points).decode()
    for path in (ROOT / "plugins").glob("*.py"):
        if path.stem != "__init__":
            assert f"{path.stem} = pruneframe.plugins.{path.stem}" in text
    assert "pruneframe = pruneframe.app.cli:main" in text


def test_installed_wheel_finds_its_plugins(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    assert not (target / "plugins").exists()
    code = ("import json, pruneframe, pruneframe.plugins.conv as c; "
            "print(json.dumps([pruneframe.__file__, c.__file__, sorted(p.name for p in pruneframe.get_registry().plugins if p.builtin)]))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(target), "PATH": ""},
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    core, conv, names = json.loads(out.stdout)
    assert core.startswith(str(target)) and conv.startswith(str(target))  # the installed copy, not this checkout
    assert {"conv", "linear", "ops_shape", "rnn"} <= set(names)
    # Every module comes from the wheel: the editable install of this checkout must not fill in a missing subpackage.
    code = ("import importlib, json, pkgutil, pruneframe; "
            "names = [m.name for m in pkgutil.walk_packages(pruneframe.__path__, 'pruneframe.') if not m.name.endswith('__main__')]; "
            "print(json.dumps({n: importlib.import_module(n).__file__ for n in names}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(target), "PATH": ""},
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    files = json.loads(out.stdout)
    assert {"pruneframe.graph.group", "pruneframe.tracing.trace", "pruneframe.app.cli"} <= set(files)
    outside = {n: f for n, f in files.items() if not f.startswith(str(target))}
    assert not outside, f"modules missing from the wheel, found in the checkout instead: {outside}"


def test_pyproject_lists_every_subpackage() -> None:
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "pruneframe").rglob("__init__.py")}
    assert listed == on_disk | {"pruneframe.plugins"}, "fix [tool.setuptools] packages in pyproject.toml"


def test_every_module_imports_first_in_a_fresh_interpreter() -> None:
    """``import pruneframe`` loads nothing eagerly, so any module may be the first one imported: no import cycle."""
    package = ROOT / "pruneframe"
    modules = sorted("pruneframe." + ".".join(p.relative_to(package).with_suffix("").parts).removesuffix(".__init__")
                     for p in package.rglob("*.py") if p.name != "__main__.py")
    modules += sorted(f"pruneframe.plugins.{p.stem}" for p in (ROOT / "plugins").glob("*.py") if p.stem != "__init__")
    script = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
    for name in modules:
        result = subprocess.run([sys.executable, "-c", script, name.removesuffix(".")], capture_output=True, text=True,
                                timeout=300)
        assert result.returncode == 0, f"{name}: {result.stderr[-2000:]}"


def test_import_pruneframe_imports_no_torch() -> None:
    result = subprocess.run([sys.executable, "-c", "import sys, pruneframe; print('torch' in sys.modules)"],
                            capture_output=True, text=True, timeout=300)
    assert result.stdout.strip() == "False", result.stderr
