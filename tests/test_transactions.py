"""Group.prune() is a transaction: refused or failed prunes leave the model exactly as it was."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pruneframe as tp
from pruneframe.graph import dependency_graph
from pruneframe import PruningError


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv3 = nn.Conv2d(8, 4, 1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)) + y)
        return self.fc(self.conv3(y).mean((2, 3)))


def state(model: nn.Module) -> dict:
    """Everything a prune may change: tensors (values, shapes, identity), size attributes, the output."""
    tensors = {n: (t.detach().clone(), id(t)) for n, t in list(model.named_parameters()) + list(model.named_buffers())}
    attrs = {}
    for name, m in model.named_modules():
        for a in ("in_channels", "out_channels", "groups", "num_features", "in_features", "out_features"):
            if hasattr(m, a):
                attrs[f"{name}.{a}"] = getattr(m, a)
    torch.manual_seed(0)
    with torch.no_grad():
        out = model.eval()(torch.randn(2, 3, 8, 8))
    return {"tensors": tensors, "attrs": attrs, "out": out}


def assert_same(a: dict, b: dict) -> None:
    assert a["attrs"] == b["attrs"]
    assert a["tensors"].keys() == b["tensors"].keys()
    for k in a["tensors"]:
        (ta, ia), (tb, ib) = a["tensors"][k], b["tensors"][k]
        assert ia == ib, f"{k} is a different tensor object"
        assert ta.shape == tb.shape and torch.equal(ta, tb), k
    assert torch.equal(a["out"], b["out"])


def build(model: nn.Module) -> tp.DependencyGraph:
    return tp.DependencyGraph().build_dependency(model, torch.randn(1, 3, 8, 8))


class Delegating(tp.pruner.BasePruningFunc):
    """Prunes and traces like the built-in pruner of ``layer_type``; subclasses add a bug."""

    def __init__(self, layer_type: type):
        self.inner = tp.get_registry().layer_pruner(layer_type)

    def prune_out_channels(self, layer, idxs):
        return self.inner.prune_out_channels(layer, idxs)

    def prune_in_channels(self, layer, idxs):
        return self.inner.prune_in_channels(layer, idxs)

    def input_channel_dims(self, layer, inputs):
        return self.inner.input_channel_dims(layer, inputs)

    def output_channel_dims(self, layer, outputs):
        return self.inner.output_channel_dims(layer, outputs)

    def in_out_coupled(self, layer):
        return False


class ExplodingConvPruner(Delegating):
    """Prunes like the built-in conv pruner, but fails on the n-th call (a plugin bug halfway through a group)."""

    def __init__(self, fail_on: int):
        super().__init__(nn.Conv2d)
        self.calls, self.fail_on = 0, fail_on

    def _count(self):
        self.calls += 1
        if self.calls == self.fail_on:
            raise RuntimeError("injected failure")

    def prune_out_channels(self, layer, idxs):
        self._count()
        return super().prune_out_channels(layer, idxs)

    def prune_in_channels(self, layer, idxs):
        self._count()
        return super().prune_in_channels(layer, idxs)

    def get_out_channels(self, layer):
        return layer.out_channels


@pytest.mark.parametrize("fail_on", [2, 3])
def test_failure_halfway_restores_everything(fail_on: int) -> None:
    model = Net()
    before = state(model)
    DG = tp.DependencyGraph()
    DG.register_customized_layer(nn.Conv2d, ExplodingConvPruner(fail_on))
    DG.build_dependency(model, torch.randn(1, 3, 8, 8))
    group = DG.get_pruning_group(model.conv1, tp.prune_conv_out_channels, [1, 5])
    assert len(group) >= 4  # conv1 out, bn1, conv2 in/out, bn2, conv3 in: several layers before the failure
    with pytest.raises(PruningError) as err:
        group.prune()
    message = str(err.value)
    assert "injected failure" in message and "register_customized_layer" in message and "restored" in message
    assert_same(state(model), before)
    # the graph still works: the same group prunes once the bug is gone
    DG._customized.clear()
    DG2 = build(model)
    DG2.get_pruning_group(model.conv1, tp.prune_conv_out_channels, [1, 5]).prune()
    assert model.conv1.out_channels == 6 and model.conv3.in_channels == 6


def test_group_that_would_empty_a_layer_is_refused() -> None:
    model = Net()
    before = state(model)
    DG = build(model)
    group = DG.get_pruning_group(model.conv1, tp.prune_conv_out_channels, list(range(8)))
    assert not DG.check_pruning_group(group)
    with pytest.raises(PruningError, match="remove all 8"):
        group.prune()
    assert_same(state(model), before)


def test_model_output_channels_are_refused() -> None:
    model = Net()
    before = state(model)
    DG = build(model)
    group = DG.get_pruning_group(model.fc, tp.prune_linear_out_channels, [0])
    assert not DG.check_pruning_group(group)
    with pytest.raises(PruningError, match="model output"):
        group.prune()
    assert_same(state(model), before)


@pytest.mark.parametrize("idxs, error", [([8], IndexError), ([-1], IndexError), ([1, 1], ValueError)])
def test_bad_indices_are_named_and_change_nothing(idxs, error) -> None:
    model = Net()
    before = state(model)
    DG = build(model)
    with pytest.raises(error, match=str(idxs[0]) if idxs[0] != 1 else r"\[1\]"):
        DG.get_pruning_group(model.conv1, tp.prune_conv_out_channels, idxs)
    assert_same(state(model), before)


def test_model_changed_behind_the_graph_is_refused() -> None:
    model = Net()
    DG = build(model)
    tp.prune_conv_out_channels(model.conv3, [0])  # outside the graph
    tp.prune_linear_in_channels(model.fc, [0])
    before = state(model)
    group = DG.get_pruning_group(model.conv2, tp.prune_conv_out_channels, [0])
    with pytest.raises(PruningError, match="changed outside this graph"):
        DG.get_pruning_group(model.conv3, tp.prune_conv_out_channels, [0]).prune()
    assert_same(state(model), before)
    del group


def test_functional_pruners_validate_before_touching() -> None:
    layer = nn.Conv2d(4, 6, 3)
    saved = copy.deepcopy(layer.state_dict())
    with pytest.raises(IndexError, match="6"):
        tp.prune_conv_out_channels(layer, [0, 6])
    assert layer.out_channels == 6
    for k, v in layer.state_dict().items():
        assert torch.equal(v, saved[k])


def test_tracing_leaves_the_model_as_it_was() -> None:
    """Building a graph runs a forward pass; batch-norm statistics and the RNG must not change."""
    model = Net().train()
    running = model.bn1.running_mean.clone()
    x = torch.randn(1, 3, 8, 8)
    rng = torch.get_rng_state()
    tp.DependencyGraph().build_dependency(model, x)
    assert torch.equal(model.bn1.running_mean, running) and model.bn1.num_batches_tracked.item() == 0
    assert torch.equal(torch.get_rng_state(), rng)
    assert model.training


class WritesInPlace(Delegating):
    """A buggy pruner: it scales the weight in place before pruning like the built-in one."""

    def __init__(self):
        super().__init__(nn.Linear)

    def prune_out_channels(self, layer, idxs):
        with torch.no_grad():
            layer.weight.mul_(2)
        return super().prune_out_channels(layer, idxs)


def test_a_pruner_writing_in_place_is_caught_and_named() -> None:
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    DG = tp.DependencyGraph()
    DG.register_customized_layer(nn.Linear, WritesInPlace())
    DG.build_dependency(model, torch.randn(1, 4))
    with pytest.raises(PruningError, match="wrote in place"):
        DG.get_pruning_group(model[0], tp.prune_linear_out_channels, [0]).prune()
    assert model[0].weight.shape == (6, 4) and model[2].weight.shape == (2, 6)  # structure restored
    assert model(torch.randn(3, 4)).shape == (3, 2)


def test_blocked_groups_say_why() -> None:
    model = Net()
    DG = build(model)
    group = DG.get_pruning_group(model.conv1, tp.prune_conv_in_channels, [0])
    assert group.blocked_reasons == ["it comes from a model input"]
    assert [dep.target.name for dep, _ in group] == ["conv1"]  # blocked channels do not drag in every other one


class LiteralView(nn.Module):
    """Reshapes with a literal head count and width: the trace cannot know that 4 x 4 is fixed in code."""

    def __init__(self):
        super().__init__()
        self.proj, self.out = nn.Linear(16, 16), nn.Linear(16, 3)

    def forward(self, x):
        y = self.proj(x).view(x.shape[0], 4, 4)
        return self.out((y * y.softmax(-1)).reshape(x.shape[0], 16))


@pytest.mark.parametrize("trace_mode", ["shapes", "real"])
def test_a_prune_the_model_cannot_run_with_is_undone(monkeypatch, trace_mode) -> None:
    monkeypatch.setenv("PRUNEFRAME_TRACE", trace_mode)
    model = LiteralView().train()
    x = torch.randn(2, 16)
    DG = tp.DependencyGraph().build_dependency(model, x)
    before = {n: t.detach().clone() for n, t in model.state_dict().items()}
    group = DG.get_pruning_group(model.proj, tp.prune_linear_out_channels, [1])
    assert DG.check_pruning_group(group)  # the trace alone cannot see the literal 4: only running tells
    with pytest.raises(tp.ModelStopsRunningError, match=r"no longer runs on the example inputs, or slices them wrongly \(RuntimeError: shape"):
        group.prune()
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert model.proj.out_features == 16 and model(x).shape == (2, 3) and DG.pruning_history() == []


@pytest.mark.parametrize("off", [False, "never"])
def test_verify_prunes_off_lets_the_prune_through(off) -> None:
    model = LiteralView()
    x = torch.randn(2, 16)
    DG = tp.DependencyGraph().build_dependency(model, x, verify_prunes=off)
    DG.get_pruning_group(model.proj, tp.prune_linear_out_channels, [1]).prune()
    assert model.proj.out_features == 12  # pruned: one position in each of the four traced heads
    with pytest.raises(RuntimeError, match="invalid for input of size"):
        model(x)


def test_prunes_are_run_only_where_the_code_gave_sizes(monkeypatch) -> None:
    """"auto" runs the model after a prune whose channels met a view; a plain conv stack needs no run."""
    calls = []
    real_runs = dependency_graph.runs
    monkeypatch.setattr(dependency_graph, "runs", lambda *a, **k: calls.append(1) or real_runs(*a, **k))
    convs = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3))
    DG = tp.DependencyGraph().build_dependency(convs, torch.randn(1, 3, 8, 8))
    DG.get_pruning_group(convs[0], tp.prune_conv_out_channels, [1]).prune()
    assert calls == []
    DG = tp.DependencyGraph().build_dependency(convs, torch.randn(1, 3, 8, 8), verify_prunes="always")
    DG.get_pruning_group(convs[0], tp.prune_conv_out_channels, [2]).prune()
    assert calls == [1]
    model = LiteralView()
    DG = tp.DependencyGraph().build_dependency(model, torch.randn(2, 16))
    with pytest.raises(tp.ModelStopsRunningError):
        DG.get_pruning_group(model.proj, tp.prune_linear_out_channels, [1]).prune()
    assert calls == [1, 1]


@pytest.mark.parametrize("bad", ["sometimes", 1, None])
def test_verify_prunes_rejects_unknown_modes(bad) -> None:
    with pytest.raises(ValueError, match="verify_prunes"):
        tp.DependencyGraph().build_dependency(nn.Linear(2, 2), torch.randn(1, 2), verify_prunes=bad)
