"""``--dry-run`` reports and writes nothing; progress bars go to stderr only, and only when asked or watched."""
from __future__ import annotations

import textwrap
import re
from pathlib import Path

import pytest
import torch
import torchvision

import pruneframe as tp
from pruneframe.app.cli import main

SMALL = ("--input-shape", "1,3,32,32")


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.rglob("*")) if p.is_file()}


def test_dry_run_reports_what_would_go_and_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    (tmp_path / "net.py").write_text(textwrap.dedent("""
        import torch
        from torch import nn

        def build():
            return nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 4, 3)), torch.randn(1, 3, 8, 8)
    """))
    torch.manual_seed(0)
    from pruneframe.app.model_sources import build

    torch.save(build(f"{tmp_path / 'net.py'}:build").model.state_dict(), tmp_path / "w.pth")
    monkeypatch.chdir(tmp_path)
    before = _snapshot(tmp_path)
    assert main(["prune", "net.py:build", "--weights", "w.pth", "--ratio", "0.5", "--dry-run", "--out", "would.pth"]) == 0
    printed = capsys.readouterr().out
    assert "dry run: the prune below was made in memory only\nLayers changed: 3 of 5" in printed
    assert "weights: w.pth: 9 tensors" in printed and "random initialisation" not in printed
    assert re.search(r"^ 0 +\| Conv2d +\| out_channels 16 -> 8 *$", printed, re.M), printed
    assert re.search(r"^ 1 +\| BatchNorm2d +\| num_features 16 -> 8 *$", printed, re.M), printed
    assert "Parameters: 0.0011 M -> 0.0005 M (50.2% of the original)" in printed
    assert printed.rstrip().endswith("dry run: nothing was written (not even --out would.pth)")
    assert _snapshot(tmp_path) == before, "a file was written or touched"


def test_dry_run_needs_no_out_and_says_when_nothing_can_go(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["prune", "torchvision:resnet18", *SMALL, "--ratio", "0.5", "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "Layers changed: 41 of 68" in printed and re.search(r"^ conv1 +\| Conv2d +\| out_channels 64 -> 32 *$", printed, re.M)
    assert main(["prune", "torchvision:resnet18", *SMALL, "--ratio", "0", "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "Layers changed: 0 of 68 (nothing was pruned)" in printed
    assert "prunable, but the pruner chose none of its channels" in printed and "and 24 more (all_layers=True / --all-layers lists them)" in printed
    assert not list(tmp_path.iterdir())


def test_bars_are_off_when_stderr_is_not_a_terminal_and_on_with_progress(tmp_path: Path, capsys) -> None:
    assert main(["prune", "torchvision:resnet18", *SMALL, "--dry-run"]) == 0
    quiet = capsys.readouterr()
    assert "scoring groups" not in quiet.err and "tracing the model" not in quiet.err
    assert main(["prune", "torchvision:resnet18", *SMALL, "--dry-run", "--progress", "--target-macs", "0.5"]) == 0
    shown = capsys.readouterr()
    for bar in ("tracing the model", "scoring groups", "searching the ratio", "pruning groups"):
        assert bar in shown.err, bar
        assert bar not in shown.out, f"{bar!r} polluted stdout"
    assert "\r" not in shown.out and "it/s" not in shown.out
    assert shown.out.splitlines()[0] == "model: torchvision:resnet18"


def test_meta_pruner_progress_is_off_by_default_and_on_stderr_when_asked(capsys) -> None:
    x = torch.randn(1, 3, 32, 32)
    tp.pruner.MetaPruner(torchvision.models.resnet18(weights=None), x, tp.importance.MagnitudeImportance(p=2)).step()
    assert capsys.readouterr() == ("", "")
    tp.pruner.MetaPruner(torchvision.models.resnet18(weights=None), x, tp.importance.MagnitudeImportance(p=2), progress=True).step()
    captured = capsys.readouterr()
    assert captured.out == "" and "scoring groups" in captured.err and "pruning groups" in captured.err
