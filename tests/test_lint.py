"""The shipped code and the tests pass pyflakes' checks (through ruff): no unused or undefined names, no syntax errors."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_no_unused_or_undefined_names() -> None:
    pytest.importorskip("ruff", reason="ruff is a test extra: pip install -e '.[test]'")
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--select", "F,E9", "--output-format", "concise",
                             "pruneframe", "plugins", "contrib", "tests", "benchmarks"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
