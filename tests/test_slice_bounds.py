"""Slices along channels are verified instead of pinned: a prune of sliced channels is run-checked, and the pruned
model's run must slice with the bounds the surviving channels give (``pruneframe.graph.slice_bounds``).

A slice whose bounds follow the prune (a stored size a fix-up updates, or the tensor's own width) leaves its
channels prunable and exact; a literal bound makes the prune undone with ``ModelStopsRunningError`` naming the
slice and both bounds, and MetaPruner leaves that group whole with its warning.
"""
from __future__ import annotations

import copy
import warnings
from typing import Any

import pytest
import torch
from torch import nn

import pruneframe as tp
from pruneframe.registry import build_registry
from pruneframe.testing import check_prune_equivalence

X = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


class StoredSplit(nn.Module):
    """Splits ``a``'s output at ``split_at``, a size it stores; the toy fix-up keeps it equal to ``b``'s input width."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 8), nn.Linear(4, 3), nn.Linear(4, 3)
        self.split_at = 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        return self.b(y[:, :self.split_at]) + self.c(y[:, self.split_at:])


class LiteralSplit(nn.Module):
    """Splits ``a``'s output at the literal 4; what follows takes any width, so a wrong split still runs."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.d, self.e = nn.Linear(4, 8), nn.Linear(8, 6), nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        return self.e(self.d(torch.cat([y[:, :4].relu(), y[:, 4:].sigmoid()], 1)))


class HalvesSplit(LiteralSplit):
    """Splits ``a``'s output in halves read from the tensor's width."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        half = y.shape[-1] // 2
        return self.e(self.d(torch.cat([y[..., :half].relu(), y[..., half:].sigmoid()], 1)))


def _split_follows_b(module: StoredSplit) -> None:
    module.split_at = module.b.in_features


class StoredSplitFixup:
    @tp.hookimpl
    def pruneframe_fixups(self, register: Any) -> None:
        register([StoredSplit], _split_follows_b, name="stored-split")


@pytest.fixture()
def registry() -> Any:
    return build_registry(extra_plugins=[("stored-split", StoredSplitFixup())])


def _model(cls: type) -> nn.Module:
    torch.manual_seed(0)
    return cls().double().eval()


def _prune_a(idxs: list[int]):
    def step(graph: tp.DependencyGraph, model: nn.Module) -> None:
        graph.get_pruning_group(model.a, tp.prune_linear_out_channels, idxs).prune()
    return step


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("idxs, widths", [([1], (3, 4)), ([6], (4, 3)), ([0, 2, 5], (2, 3))])
def test_a_stored_bound_a_fixup_keeps_in_step_prunes_exactly(registry: Any, idxs: list[int], widths: tuple[int, int]) -> None:
    error, pruned, graph = check_prune_equivalence(_model(StoredSplit), X, _prune_a(idxs), registry=registry)
    assert [(s.start, s.end) for s in graph._trace.slices] == [(0, 4), (4, 8)]
    assert (pruned.b.in_features, pruned.c.in_features) == widths and pruned.split_at == widths[0]
    assert pruned.a.out_features == 8 - len(idxs)
    assert error < 1e-12


def test_without_the_fixup_the_stale_bound_is_undone(registry: Any) -> None:
    model = _model(StoredSplit)
    graph = tp.DependencyGraph().build_dependency(model, X)  # the default registry: nothing updates split_at
    with pytest.raises(tp.ModelStopsRunningError):
        graph.get_pruning_group(model.a, tp.prune_linear_out_channels, [1]).prune()
    assert model.a.out_features == 8 and model.split_at == 4


def test_a_literal_bound_undoes_a_prune_before_it_and_names_the_slice() -> None:
    model = _model(LiteralSplit)
    before = _state(model)
    graph = tp.DependencyGraph().build_dependency(model, X)
    with pytest.raises(tp.ModelStopsRunningError) as caught:
        graph.get_pruning_group(model.a, tp.prune_linear_out_channels, [1]).prune()
    assert ("a slice of the output of a along dim 1 kept its bounds [0:4] although the prune moved them to [0:3]: "
            "the code slices with a literal") in str(caught.value)
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert graph.pruning_history() == [] and graph.get_out_channels(model.a) == 8


@pytest.mark.parametrize("idxs", [[6], [4, 5, 6, 7]])
def test_a_literal_bound_allows_a_prune_that_does_not_move_it(idxs: list[int]) -> None:
    """Channels after the bound 4: ``y[:, :4]`` and ``y[:, 4:]`` still select the right channels (the first
    becomes the whole tensor, which makes no slice call at all, once every channel after it is gone)."""
    error, pruned, _ = check_prune_equivalence(_model(LiteralSplit), X, _prune_a(idxs))
    assert pruned.a.out_features == 8 - len(idxs) and pruned.d.in_features == 8 - len(idxs) and error < 1e-12


@pytest.mark.parametrize("trace_mode", ["auto", "real"])
def test_the_slice_check_works_on_fake_and_real_tensors(monkeypatch: pytest.MonkeyPatch, trace_mode: str) -> None:
    monkeypatch.setenv("PRUNEFRAME_TRACE", trace_mode)
    model = _model(LiteralSplit)
    graph = tp.DependencyGraph().build_dependency(model, X)
    assert graph._trace.mode == ("shapes" if trace_mode == "auto" else "real")
    with pytest.raises(tp.ModelStopsRunningError, match=r"kept its bounds \[0:4\] although the prune moved them to \[0:3\]"):
        graph.get_pruning_group(model.a, tp.prune_linear_out_channels, [0, 7]).prune()
    graph.get_pruning_group(model.a, tp.prune_linear_out_channels, [7]).prune()
    assert model.a.out_features == 7


def test_a_literal_bound_inside_one_run_check_undoes_the_whole_block() -> None:
    model = _model(LiteralSplit)
    graph = tp.DependencyGraph().build_dependency(model, X)
    with pytest.raises(tp.ModelStopsRunningError, match=r"kept its bounds \[0:4\] although the prune moved them to \[0:2\]"):
        with graph.one_run_check():
            graph.get_pruning_group(model.a, tp.prune_linear_out_channels, [0]).prune()
            graph.get_pruning_group(model.a, tp.prune_linear_out_channels, [0]).prune()  # traced channel 1 now
    assert model.a.out_features == 8 and graph.pruning_history() == []


def test_bounds_from_the_tensor_follow_a_prune_that_keeps_the_halves_equal() -> None:
    error, pruned, _ = check_prune_equivalence(_model(HalvesSplit), X, _prune_a([1, 5]))
    assert pruned.a.out_features == 6 and error < 1e-12


def test_bounds_from_the_tensor_undo_a_prune_that_makes_the_halves_unequal() -> None:
    model = _model(HalvesSplit)
    graph = tp.DependencyGraph().build_dependency(model, X)
    with pytest.raises(tp.ModelStopsRunningError) as caught:
        graph.get_pruning_group(model.a, tp.prune_linear_out_channels, [5]).prune()
    # 7 channels: the code's half is 3, the surviving first half is 4 channels
    assert "no slice of the output of a along dim 1 has the bounds [0:4] the prune moves [0:4] to" in str(caught.value)
    assert model.a.out_features == 8


def test_meta_pruner_leaves_the_literal_group_whole_with_the_warning_and_prunes_the_rest() -> None:
    model = _model(LiteralSplit)
    with torch.no_grad():
        model.a.weight[:4] *= 0.01  # the least important channels lie before the literal bound
    reference = copy.deepcopy(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pruner = tp.pruner.MetaPruner(model, X, tp.importance.MagnitudeImportance(p=2), pruning_ratio=0.5, ignored_layers=[model.e])
        pruner.step()
    said = [str(w.message) for w in caught if "group(s) left whole" in str(w.message)]
    assert (model.a.out_features, model.d.out_features, model.e.in_features) == (8, 3, 3)
    assert len(said) == 1 and said[0].startswith("1 group(s) left whole: after pruning them the model no longer runs")
    assert "a, d (a slice of the output of a along dim 1 kept its bounds [0:4] although the prune moved them to [0:" in said[0]
    [(group, why)] = pruner.left_whole
    assert next(iter(group))[0].target.name == "a" and "the code slices with a literal" in why
    assert model(X).shape == reference(X).shape


def test_without_run_checks_a_slice_pins_its_channels_as_before() -> None:
    model = _model(LiteralSplit)
    graph = tp.DependencyGraph().build_dependency(model, X, verify_prunes="never")
    group = graph.get_pruning_group(model.a, tp.prune_linear_out_channels, [1])
    assert not graph.check_pruning_group(group)  # all 8 channels are coupled: the group would empty the layer
    assert graph._trace.slices == []


class StridedSlice(LiteralSplit):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        return self.e(self.d(torch.cat([y[:, ::2], y[:, 1::2]], 1)))


def test_a_slice_with_a_step_still_pins() -> None:
    model = _model(StridedSlice)
    graph = tp.DependencyGraph().build_dependency(model, X)
    assert not graph.check_pruning_group(graph.get_pruning_group(model.a, tp.prune_linear_out_channels, [1]))
