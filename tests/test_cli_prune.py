"""`pruneframe prune` in a subprocess: exit 0, MACs and parameters printed, the saved file reloads."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest
import torch
import torchvision

from pruneframe.app.cli import main
from pruneframe import load_pruned
from pruneframe.utils import count_ops_and_params

pytestmark = pytest.mark.slow


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pruneframe", *args], capture_output=True, text=True, timeout=600)


def test_prune_resnet18_prints_figures_and_saves_a_reloadable_file(tmp_path) -> None:
    out = tmp_path / "r18.pth"
    proc = run("prune", "torchvision:resnet18", "--ratio", "0.5", "--importance", "l2", "--steps", "2",
               "--round-to", "8", "--input-shape", "1,3,64,64", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "step 1/2" in proc.stdout and "step 2/2" in proc.stdout
    macs = re.search(r"MACs:\s+([\d.]+) G -> ([\d.]+) G", proc.stdout)
    params = re.search(r"Parameters:\s+([\d.]+) M -> ([\d.]+) M", proc.stdout)
    assert macs and params, proc.stdout
    assert float(macs.group(2)) < 0.5 * float(macs.group(1)) and float(params.group(2)) < 0.5 * float(params.group(1))
    model = load_pruned(str(out))
    x = torch.randn(1, 3, 64, 64)
    assert model(x).shape == (1, 1000)
    convs = [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(c % 8 == 0 for c in convs) and convs[0] == 32
    got_macs, got_params = count_ops_and_params(model, x)[:2]
    assert abs(got_params / 1e6 - float(params.group(2))) < 1e-3
    assert got_params < sum(p.numel() for p in torchvision.models.resnet18(weights=None).parameters()) / 2


def test_bad_input_gets_a_message_and_exit_2(tmp_path, capsys) -> None:
    out = str(tmp_path / "x.pth")
    for args, message in [(("nosuch:thing",), "unknown source"), (("torchvision:resnet18", "--importance", "taylor"), "needs gradients"),
                          (("torchvision:resnet18", "--importance", "nosuch"), "'nosuch' is not a known importance criterion; use one of l1, l2"),
                          (("torchvision:resnet18", "--ratio", "1.5"), "pruning_ratio=1.5"),
                          (("torchvision:resnet18", "--ignore", "nosuch"), "no such layer")]:
        assert main(["prune", *args, "--input-shape", "1,3,32,32", "--out", out]) == 2, args
        assert message in capsys.readouterr().err, args
    assert not (tmp_path / "x.pth").exists()
