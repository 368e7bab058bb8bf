"""Shared by the contrib tests: pip-install a contrib distribution offline, use it in this process or in a clean subprocess."""
from __future__ import annotations

import contextlib
import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

from conftest import subprocess_env



def run_python(args: list[str], cwd: Path, pythonpath: Path | None, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    """Run Python in a subprocess, with ``pythonpath`` (if given) before any inherited PYTHONPATH; it must exit 0."""
    env = subprocess_env()
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(pythonpath), env.get("PYTHONPATH", "")) if p)
    result = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{args[:2]} failed:\n{result.stderr[-6000:]}"
    return result


def install_offline(contrib: Path, workdir: Path, target: Path) -> Path:
    """pip-install the distribution at ``contrib`` offline into ``target`` (``--target``); returns ``target``.

    It is built from a copy in ``workdir``: an in-tree build would leave build/ and *.egg-info in the checkout.
    """
    source = workdir / contrib.name
    shutil.copytree(contrib, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", ".pytest_cache"))
    run_python(["-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "--disable-pip-version-check",
                "--quiet", "--target", str(target), str(source)], cwd=workdir, pythonpath=None)
    return target


def run_readme_example(contrib: Path, installed: Path, workdir: Path) -> subprocess.CompletedProcess[str]:
    """Run the one Python example of ``contrib``'s README (blocks after ``<!-- not-tested -->`` are skipped)."""
    pieces = (contrib / "README.md").read_text().split("```python\n")
    tested = [after.split("```", 1)[0] for before, after in zip(pieces, pieces[1:])
              if not before.rstrip().endswith("<!-- not-tested -->")]
    assert len(tested) == 1, "the README shows one tested Python example"
    script = workdir / "readme_example.py"
    script.write_text(tested[0] + "\nprint('README example OK')\n")
    result = run_python([str(script)], workdir, installed)
    assert result.stdout.rstrip().endswith("README example OK")
    return result


@contextlib.contextmanager
def installed_in_process(site: Path, package: str) -> Iterator[None]:
    """Make the distribution installed at ``site`` visible to this process, as if pip had installed it here.

    Inside, ``site`` is first on ``sys.path`` and the process-wide plugin
    registry is a fresh one that finds the distribution's entry points;
    afterwards both are put back and ``package`` is dropped from ``sys.modules``,
    so no other test sees it.
    """
    from pruneframe.registry import PluginSet, loading

    saved_path, saved_plugins = list(sys.path), loading._process_plugins
    sys.path.insert(0, str(site))
    importlib.invalidate_caches()
    loading._process_plugins = PluginSet(lazy=True)
    try:
        yield
    finally:
        sys.path[:] = saved_path
        loading._process_plugins = saved_plugins
        for name in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
            del sys.modules[name]
        importlib.invalidate_caches()


CONTRIB_ROOT = Path(__file__).resolve().parents[1] / "contrib"


def contrib_plugin(tmp_path_factory: Any, distribution: str) -> Iterator[Any]:
    """The body of a module-scoped fixture: ``contrib/<distribution>`` installed offline and in use; yields its package.

    ``yield from contrib_plugin(tmp_path_factory, "pruneframe-transformers")``.
    """
    package = distribution.replace("-", "_")
    site = install_offline(CONTRIB_ROOT / distribution, tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("site"))
    with installed_in_process(site, package):
        yield importlib.import_module(package)


def save_word_tokenizer(directory: Path) -> None:
    """Save a word-level tokenizer (100 ``w<i>`` words and a few English ones, vocabulary < 128) into ``directory``.

    What a checkpoint needs for ``--calibration`` text, made offline.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["[UNK]", *[f"w{i}" for i in range(100)], *"the a of to and in is it that was".split()]
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]").save_pretrained(directory)
