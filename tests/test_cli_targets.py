"""Pruning to a MACs or parameter target: ``--target-macs`` / ``--target-params`` and ``MetaPruner(target_macs=...)``.

The achieved counts are at or under the target and within a few percent of it; the search runs on a
shape-only twin, so the model is pruned once, and ``ratio_for_target`` does not prune it at all.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

import pruneframe as tp
from pruneframe.app import arguments
from pruneframe.app.cli import main
from pruneframe.pruner import targets
from pruneframe.pruner.targets import TargetError, parse_count, ratio_for_target
from pruneframe.utils import count_ops_and_params

X = torch.randn(1, 3, 64, 64)


def _model(name: str = "resnet18") -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.get_model(name, weights=None).eval()


def _counts(model: nn.Module, x: torch.Tensor = X) -> tuple[int, int]:
    return count_ops_and_params(model, x)[:2]


@pytest.mark.parametrize("name, kwargs", [("resnet18", {}), ("resnet18", {"global_pruning": True}),
                                          ("mobilenet_v2", {"round_to": 8}), ("resnet18", {"iterative_steps": 2})])
def test_target_macs_lands_at_or_just_under_the_target(name: str, kwargs: dict) -> None:
    model = _model(name)
    macs0, params0 = _counts(model)
    pruner = tp.pruner.MetaPruner(model, X, tp.importance.MagnitudeImportance(p=2), target_macs=0.5, **kwargs)
    for _ in range(pruner.iterative_steps):
        pruner.step()
    macs, params = _counts(model)
    assert macs <= macs0 // 2, (macs, macs0)
    assert macs >= 0.97 * (macs0 // 2), f"{macs / macs0:.3%} of the original: not within 3% of the target"
    result = pruner.target_result
    assert result.met and (result.macs, result.params) == (macs, params)
    assert result.target.macs == macs0 // 2 and result.target.original_params == params0
    assert model(X).shape == (1, 1000)


def test_target_params_as_an_absolute_count_and_both_targets_together() -> None:
    model = _model()
    tp.pruner.MetaPruner(model, X, tp.importance.MagnitudeImportance(p=2), target_params="5M").step()
    params = _counts(model)[1]
    assert 0.97 * 5e6 <= params <= 5e6

    model = _model()
    macs0, params0 = _counts(model)
    pruner = tp.pruner.MetaPruner(model, X, tp.importance.MagnitudeImportance(p=2), target_macs=0.6, target_params=0.3)
    pruner.step()
    macs, params = _counts(model)
    assert macs <= 0.6 * macs0 and params <= 0.3 * params0  # the stricter one (parameters) decides
    assert params >= 0.97 * 0.3 * params0


def test_ratio_for_target_leaves_the_model_unpruned_and_its_ratio_reproduces_the_count() -> None:
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    macs0 = _counts(model)[0]
    found = ratio_for_target(model, X, tp.importance.MagnitudeImportance(p=2), target_macs=0.4)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items()) and _counts(model)[0] == macs0
    assert found.macs <= 0.4 * macs0 and found.met and found.probes >= 3
    assert re.match(r"pruning ratio 0\.\d+.* for MACs <= [\d.]+ M \(40\.0% of the original\): MACs [\d.]+ M", str(found))
    # the uniform ratio it found meets the target too, as a plain pruning_ratio
    tp.pruner.MetaPruner(model, X, tp.importance.MagnitudeImportance(p=2), pruning_ratio=found.ratio).step()
    assert _counts(model)[0] <= 0.4 * macs0


def test_target_mistakes_are_named_before_anything_is_traced() -> None:
    imp = tp.importance.MagnitudeImportance(p=2)
    model = _model()
    with pytest.raises(ValueError, match=r"pruning_ratio=0.3 and a target \(target_macs / target_params\) were both given"):
        tp.pruner.MetaPruner(model, X, imp, pruning_ratio=0.3, target_macs=0.5)
    with pytest.raises(TargetError, match=r"target_macs='lots': give a fraction of the original \(0 < x < 1\) or a count"):
        tp.pruner.MetaPruner(model, X, imp, target_macs="lots")
    with pytest.raises(TargetError, match=r"target_params='50M': the model has 11.6895 M parameters already, so there is "
                                          "nothing to prune; give a smaller count"):
        tp.pruner.MetaPruner(model, X, imp, target_params="50M")
    with pytest.raises(TargetError, match=r"cannot be reached: pruning as far as allowed \(ratio 0.500\) leaves"):
        tp.pruner.MetaPruner(model, X, imp, target_macs=0.05, max_pruning_ratio=0.5).step()
    assert all(m.out_channels in (64, 128, 256, 512) for m in model.modules() if isinstance(m, nn.Conv2d)), "nothing pruned"


class _NeedsValues(nn.Module):
    """A model whose forward reads a value: it cannot run on shapes alone."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x).mean((2, 3))
        if float(y.abs().sum()) > -1:  # data-dependent control flow
            y = y * 2
        return self.head(y)


def test_a_model_that_cannot_run_on_shapes_gets_the_way_out_before_it_is_traced(monkeypatch: pytest.MonkeyPatch) -> None:
    import pruneframe.tracing

    traced: list[int] = []
    real = pruneframe.tracing.trace
    monkeypatch.setattr(pruneframe.tracing, "trace", lambda *a, **k: traced.append(1) or real(*a, **k))
    model = _NeedsValues().eval()
    with pytest.raises(TargetError, match=r"a target needs the model to run on shapes alone \(its tensors on the meta device\) "
                                          r"and running it failed: .* Prune by a ratio instead"):
        tp.pruner.MetaPruner(model, torch.randn(1, 3, 8, 8), tp.importance.MagnitudeImportance(p=2), target_params=0.6)
    assert model.conv.out_channels == 8 and not traced


@pytest.mark.parametrize("text, value", [("0.5", 0.5), ("2e9", 2e9), ("1.5G", 1.5e9), ("300M", 3e8), ("20k", 2e4),
                                         ("7", 7.0), (".25", 0.25), ("1.5g", 1.5e9)])
def test_counts_are_read_alike_by_the_command_line_and_the_library(text: str, value: float) -> None:
    assert parse_count(text) == pytest.approx(value)
    assert arguments._target(text) == text  # accepted before torch is imported, read the same way afterwards


@pytest.mark.parametrize("text", ["half", "-1", "0", "1.5GB", "", "1e", "nan"])
def test_malformed_counts_are_refused_by_both(text: str) -> None:
    with pytest.raises(TargetError):
        parse_count(text)
    with pytest.raises(argparse.ArgumentTypeError):
        arguments._target(text)


def test_the_search_over_a_step_function_stops_at_its_edge() -> None:
    """Counts fall in steps; the search ends on the first ratio at or under the target, and closes a jump by splitting."""
    target = targets.Target(macs=500, params=None, original_macs=1000, original_params=10)

    def measure(ratio: float, lower: float, split: int) -> tuple[int, int]:
        # ten layers, each 100 MACs: 40% off each once the ratio reaches 0.4, and 45 MACs each at 0.5
        def layer(r: float) -> int:
            return 100 if r < 0.4 else 60 if r < 0.5 else 45
        return sum(layer(ratio if k < split else lower) for k in range(10)), 10

    found = targets.search_ratio(measure, target, 0.0, 0.9, 10)
    assert found.met and 0.5 <= found.ratio < 0.5 + 1e-3 and 0.4 <= found.lower_ratio < 0.5
    assert found.layers_at_ratio == 7 and found.macs == 7 * 45 + 3 * 60 == 495


def test_the_command_line_prints_the_target_and_what_was_reached(tmp_path: Path, capsys) -> None:
    out = tmp_path / "t.pth"
    assert main(["prune", "torchvision:resnet18", "--input-shape", "1,3,64,64", "--target-macs", "0.5", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "target: MACs <= 74.2789 M (50.0% of the original)" in printed
    assert re.search(r"  pruning ratio [\d.]+.* for MACs <= 74.2789 M .*: MACs 7[34]\.\d+ M \((49\.\d|50\.0)% of the original\)", printed)
    assert "target met: MACs <= 74.2789 M (50.0% of the original)" in printed
    macs = count_ops_and_params(tp.load_pruned(str(out)), X)[0]
    assert 0.97 * 74.2789e6 <= macs <= 74.2789e6 + 100


def test_command_line_target_errors_exit_2_and_write_nothing(tmp_path: Path, capsys) -> None:
    out = tmp_path / "t.pth"
    assert main(["prune", "torchvision:resnet18", "--input-shape", "1,3,32,32", "--target-macs", "9G", "--out", str(out)]) == 2
    assert "--target-macs '9G': the model has 37.5235 M MACs already, so there is nothing to prune" in capsys.readouterr().err
    assert main(["prune", "torchvision:resnet18", "--input-shape", "1,3,32,32", "--target-params", "10", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "parameters <= 10 (0.0% of the original) cannot be reached" in err and "nothing was written" in err
    assert not out.exists()
