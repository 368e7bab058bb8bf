"""`pruneframe prune` in a subprocess: exit 0, MACs and parameters printed, the saved file reloads."""
from __future__ import annotations

import re
import subprocess
import sys
import time

import pytest
import torch
import torchvision

from pruneframe.app.cli import main
from pruneframe import load_pruned
from pruneframe.utils import count_ops_and_params

from conftest import subprocess_env

pytestmark = pytest.mark.slow


def run(*args: str, cwd: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pruneframe", *args], capture_output=True, text=True, timeout=600, cwd=cwd,
                          env=subprocess_env())


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
    for args, message in [(("nosuch:thing",), "unknown source"), (("torchvision:resnet18", "--importance", "taylor"), "needs data"),
                          (("torchvision:resnet18", "--importance", "nosuch"), "'nosuch' is not a known importance criterion; use one of l1, l2"),
                          (("torchvision:resnet18", "--ratio", "1.5"), "pruning_ratio=1.5"),
                          (("torchvision:resnet18", "--ignore", "nosuch"), "no such layer")]:
        assert main(["prune", *args, "--input-shape", "1,3,32,32", "--out", out]) == 2, args
        assert message in capsys.readouterr().err, args
    assert not (tmp_path / "x.pth").exists()


def test_arguments_are_checked_before_any_model_is_built(tmp_path, capsys) -> None:
    """Each a message naming the bad value and the way out, exit 2, no file written -- and no model built."""
    import pruneframe.app.model_sources as sources

    def never(*args, **kwargs):
        raise AssertionError("a model was built before the arguments were checked")

    original, sources.build = sources.build, never
    try:
        for args, message in [(("--ratio", "1.5"), "pruning_ratio=1.5 must be a number in [0, 1)"),
                              (("--steps", "0"), "--steps 0: give a positive number"),
                              (("--round-to", "0"), "--round-to 0"),
                              (("--out", str(tmp_path / "missing" / "x.pth")), "does not exist; create it first"),
                              (("--out", str(tmp_path)), "that is a directory"),
                              (("--weights", str(tmp_path / "nosuch.pth")), "nosuch.pth: no such file"),
                              (("--weights", str(tmp_path)), "that is a directory; name the state-dict file"),
                              (("--ratio", "0.3", "--target-params", "0.5"), "--ratio and --target-params were both given"),
                              (("--out", str(tmp_path / "missing" / "x.pth"), "--dry-run"), "does not exist; create it first")]:
            argv = ["prune", "torchvision:resnet18", "--out", str(tmp_path / "x.pth"), *args]
            assert main(argv) == 2, args
            assert message in capsys.readouterr().err, args
        assert main(["prune", "torchvision:resnet18"]) == 2
        assert "--out FILE is missing: name the file to save the pruned model to, or pass --dry-run" in capsys.readouterr().err
        for args in (("--ratio", "0.3", "--target-macs", "0.5"), ("--target-macs", "half")):  # argparse's own refusals
            with pytest.raises(SystemExit) as exited:
                main(["prune", "torchvision:resnet18", "--out", str(tmp_path / "x.pth"), *args])
            assert exited.value.code == 2
        err = capsys.readouterr().err
        assert "argument --target-macs: not allowed with argument --ratio" in err
        assert "'half': give a fraction of the original (0 < x < 1, e.g. 0.5) or a count such as 2e9, 1.5G or 300M" in err
    finally:
        sources.build = original
    assert not list(tmp_path.iterdir())


def test_an_out_in_a_missing_directory_is_refused_within_3_seconds(tmp_path) -> None:
    """Before torch is even imported: the user hears of the typo at once, not after the model is built."""
    started = time.perf_counter()
    proc = run("prune", "torchvision:resnet50", "--out", str(tmp_path / "missing" / "r50.pth"))
    elapsed = time.perf_counter() - started
    assert proc.returncode == 2 and proc.stdout == ""
    assert f"--out {tmp_path / 'missing' / 'r50.pth'}: the directory {tmp_path / 'missing'} does not exist" in proc.stderr
    assert elapsed < 3.0, f"{elapsed:.1f} s"
    assert not list(tmp_path.iterdir())


def test_the_readme_command_prints_figures_and_saves(tmp_path) -> None:
    """The README's first command, as written (in a fresh directory), and the file reloads from another one."""
    proc = run("prune", "torchvision:resnet18", "--ratio", "0.5", "--importance", "l2", "--out", "resnet18_pruned.pth",
               cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"MACs:\s+1\.8141 G -> [\d.]+ G \([\d.]+% of the original\)", proc.stdout), proc.stdout
    assert re.search(r"Parameters:\s+11\.6895 M -> [\d.]+ M \([\d.]+% of the original\)", proc.stdout), proc.stdout
    assert "saved to resnet18_pruned.pth" in proc.stdout and (tmp_path / "resnet18_pruned.pth").exists()
    model = load_pruned(str(tmp_path / "resnet18_pruned.pth"))
    assert model.conv1.out_channels == 32 and model(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


def test_rough_inputs_get_messages_not_tracebacks(tmp_path, capsys) -> None:
    out = str(tmp_path / "x.pth")
    assert main(["prune", f"hf:{tmp_path / 'nonexistent'}", "--out", out]) == 2
    assert "no such local directory or config file; pruneframe never downloads" in capsys.readouterr().err
    assert main(["prune", "torchvision:resnet18", "--input-shape", "1,7", "--out", out]) == 2
    err = capsys.readouterr().err
    assert "example_inputs=Tensor(1, 7)" in err and "Pass inputs the model accepts" in err
    # --ignore takes one value (or a comma list), so it cannot swallow the model name placed after it
    assert main(["prune", "--ignore", "nosuch", "torchvision:resnet18", "--input-shape", "1,3,32,32", "--out", out]) == 2
    assert "--ignore nosuch: no such layer in torchvision:resnet18" in capsys.readouterr().err


def test_version() -> None:
    proc = run("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == "pruneframe 0.1.0"


def test_the_saved_file_gets_the_mode_a_new_file_gets(tmp_path, monkeypatch) -> None:
    from pruneframe.app.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["prune", "torchvision:resnet18", "--ratio", "0.2", "--input-shape", "1,3,32,32", "--out", "p.pth"]) == 0
    (tmp_path / "plain").write_text("")  # what the user's umask gives any new file
    assert (tmp_path / "p.pth").stat().st_mode & 0o777 == (tmp_path / "plain").stat().st_mode & 0o777
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".pruneframe-")] == []  # no temporary left
