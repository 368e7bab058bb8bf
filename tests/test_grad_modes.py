"""A prune works whatever grad mode the caller is in, and leaves ordinary, trainable parameters."""
from __future__ import annotations

import contextlib
import io

import pytest
import torch
import torchvision
from torch import nn

import pruneframe as tp

MODES = {"grad": contextlib.nullcontext, "no_grad": torch.no_grad, "inference_mode": torch.inference_mode}


def _groups(model: nn.Module, x: torch.Tensor) -> list[list[tuple[str, str, int]]]:
    graph = tp.DependencyGraph().build_dependency(model, x)
    return [[(dep.target.name, dep.kind, len(idxs)) for dep, idxs in group] for group in graph.get_all_groups()]


@pytest.mark.parametrize("mode", list(MODES))
def test_meta_pruner_in_any_grad_mode_prunes_the_same_and_leaves_trainable_weights(mode: str) -> None:
    x = torch.randn(1, 3, 64, 64)
    torch.manual_seed(0)
    reference = torchvision.models.resnet18(weights=None).eval()
    expected = _groups(reference, x)
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    with MODES[mode]():
        assert _groups(model, x) == expected, "the graph does not depend on the grad mode"
        tp.pruner.MetaPruner(model, x, tp.importance.MagnitudeImportance(), pruning_ratio=0.5, ignored_layers=[model.fc]).step()
    assert model.conv1.out_channels == 32
    assert not any(p.is_inference() for p in model.parameters()) and all(p.requires_grad for p in model.parameters())
    model(x).sum().backward()
    assert model.conv1.weight.grad.shape == model.conv1.weight.shape


def test_a_plan_loads_under_inference_mode() -> None:
    x = torch.randn(1, 3, 32, 32)
    model = torchvision.models.resnet18(weights=None).eval()
    tp.pruner.MetaPruner(model, x, tp.importance.MagnitudeImportance(), pruning_ratio=0.5, ignored_layers=[model.fc]).step()
    buffer = io.BytesIO()
    torch.save(tp.state_dict(model), buffer)
    buffer.seek(0)
    fresh = torchvision.models.resnet18(weights=None).eval()
    with torch.inference_mode():
        tp.load_state_dict(fresh, state_dict=torch.load(buffer, weights_only=True))
        out = fresh(x)
    assert not any(p.is_inference() for p in fresh.parameters())
    with torch.no_grad():
        assert torch.equal(out, model(x))
