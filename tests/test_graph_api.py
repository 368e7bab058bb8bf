"""The DependencyGraph API as Torch-Pruning users call it, and the tracer's safety rules."""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pruneframe as tp
from pruneframe.testing import assert_prune_equivalent, check_prune_equivalence, prune_random


class TwoBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 6, 1)
        self.mix = nn.Conv2d(10, 5, 1)
        self.head = nn.Conv2d(5, 2, 1)

    def forward(self, x):
        return self.head(F.relu(self.mix(torch.cat([self.a(x), self.b(x)], 1))))


X = torch.randn(1, 3, 8, 8)


def test_concat_offsets_are_exact() -> None:
    model = TwoBranch()
    DG = tp.DependencyGraph().build_dependency(model, X)
    group = DG.get_pruning_group(model.b, tp.prune_conv_out_channels, [0, 2, 5])
    found = {dep.target.name: (tp.graph.function_name(dep.handler), idxs) for dep, idxs in group}
    assert found == {"b": ("prune_out_channels", [0, 2, 5]), "mix": ("prune_in_channels", [4, 6, 9])}
    mix_dep = next(dep for dep, _ in group if dep.target.module is model.mix)
    assert mix_dep.index_mapping([1]) == [5]
    assert mix_dep.source.module is model.b and mix_dep.trigger is tp.prune_conv_out_channels
    table = str(group)
    assert "mix" in table and "prune_in_channels" in table and "[4, 6, 9]" in table
    group.exec()  # Torch-Pruning's older spelling
    assert model.b.out_channels == 3 and model.mix.in_channels == 7
    assert model(X).shape == (1, 2, 8, 8)


def test_example_inputs_tuple_and_dict() -> None:
    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.f, self.g, self.out = nn.Linear(4, 8), nn.Linear(6, 8), nn.Linear(8, 2)

        def forward(self, x, y, scale=1.0):
            return self.out(F.relu(self.f(x) + self.g(y)) * scale)

    x, y = torch.randn(2, 4), torch.randn(2, 6)
    for inputs in [(x, y), [x, y], {"x": x, "y": y}]:
        model = TwoInputs()
        DG = tp.DependencyGraph().build_dependency(model, example_inputs=inputs)
        group = DG.get_pruning_group(model.f, tp.prune_linear_out_channels, [1, 3])
        assert {dep.target.name for dep, _ in group} == {"f", "g", "out"}
        group.prune()
        assert model(x, y).shape == (2, 2) and model.g.out_features == 6


def test_get_all_groups_roots_and_ignored_layers() -> None:
    model = TwoBranch()
    DG = tp.DependencyGraph().build_dependency(model, X)
    roots = [g[0].dep.target.name for g in DG.get_all_groups()]
    assert roots == ["a", "b", "mix"]  # head's outputs are the model's output: not prunable
    roots = [g[0].dep.target.name for g in DG.get_all_groups(ignored_layers=[model.mix])]
    assert roots == ["a", "b"]
    roots = [g[0].dep.target.name for g in DG.get_all_groups(root_module_types=[nn.Linear])]
    assert roots == []
    DG = tp.DependencyGraph().build_dependency(model, X, ignored_layers=[model.a])
    assert [g[0].dep.target.name for g in DG.get_all_groups()] == ["b", "mix"]
    assert not DG.check_pruning_group(DG.get_pruning_group(model.a, tp.prune_conv_out_channels, [0]))


def test_unknown_op_blocks_and_is_reported_once() -> None:
    class Sorts(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2, self.c3 = nn.Conv2d(3, 6, 1), nn.Conv2d(6, 4, 1), nn.Conv2d(6, 4, 1)

        def forward(self, x):
            y = self.c1(x)
            z = torch.sort(y, dim=2).values  # sort along a spatial dim: no plugin handles aten.sort
            z = torch.sort(z, dim=3).values
            return self.c2(z) + self.c3(y)

    model = Sorts()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        DG = tp.DependencyGraph().build_dependency(model, X)
    reports = [w for w in caught if issubclass(w.category, tp.UnsupportedOpWarning)]
    assert len(reports) == 1 and "aten.sort" in str(reports[0].message) and "op plugin" in str(reports[0].message)
    group = DG.get_pruning_group(model.c1, tp.prune_conv_out_channels, [0])
    assert not DG.check_pruning_group(group)
    assert any("aten.sort" in r for r in group.blocked_reasons)
    assert [g[0].dep.target.name for g in DG.get_all_groups()] == []  # c2/c3 outputs reach the model output


def test_several_prunes_through_one_graph_stay_exact() -> None:
    first, second = prune_random(ratio=0.3, seed=0), prune_random(ratio=0.3, seed=1)

    def twice(graph, model):
        first(graph, model)
        second(graph, model)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Conv2d(3, 10, 1), nn.Conv2d(10, 10, 3, padding=1), nn.Conv2d(10, 3, 1)

        def forward(self, x):
            y = F.relu(self.a(x))
            return self.c(F.relu(self.b(y)) + y)

    error, pruned, graph = check_prune_equivalence(Net(), X, twice)
    assert error < 1e-9 and len(graph.pruning_history()) == 2
    assert pruned.a.out_channels < 7  # two rounds of 30%


def test_weight_sharing_layer_called_twice() -> None:
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem1, self.stem2 = nn.Conv2d(3, 6, 1), nn.Conv2d(3, 6, 1)
            self.shared = nn.Conv2d(6, 8, 3, padding=1)
            self.head = nn.Conv2d(8, 2, 1)

        def forward(self, x):
            return self.head(F.relu(self.shared(self.stem1(x))) + F.relu(self.shared(self.stem2(x))))

    assert_prune_equivalent(Shared(), X, prune_random(ratio=0.5, seed=0))
    model = Shared()
    DG = tp.DependencyGraph().build_dependency(model, X)
    group = DG.get_pruning_group(model.stem1, tp.prune_conv_out_channels, [0])
    assert {dep.target.name for dep, _ in group} == {"stem1", "stem2", "shared"}


def test_unwrapped_parameter_with_explicit_dim() -> None:
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(3, 6, 1)
            self.gain = nn.Parameter(torch.rand(1, 6, 1, 1) + 0.5)
            self.out = nn.Conv2d(6, 2, 1)

        def forward(self, x):
            return self.out(self.c(x) * self.gain)

    model = Scaled()
    DG = tp.DependencyGraph().build_dependency(model, X, unwrapped_parameters=[(model.gain, 1)])
    group = DG.get_pruning_group(model.c, tp.prune_conv_out_channels, [2, 4])
    assert any(dep.target.module is model.gain for dep, _ in group)
    group.prune()
    assert model.gain.shape == (1, 4, 1, 1) and model(X).shape == (1, 2, 8, 8)
    assert_prune_equivalent(Scaled(), X, prune_random(ratio=0.5, seed=0))


def test_errors_name_the_problem() -> None:
    model = TwoBranch()
    DG = tp.DependencyGraph()
    with pytest.raises(tp.PruningError, match="build_dependency"):
        DG.get_pruning_group(model.a, tp.prune_conv_out_channels, [0])
    DG.build_dependency(model, X)
    with pytest.raises(ValueError, match="not a node"):
        DG.get_pruning_group(nn.Conv2d(3, 3, 1), tp.prune_conv_out_channels, [0])
    with pytest.raises(ValueError, match="output or input"):
        DG.get_pruning_group(model.a, lambda layer, idxs: layer, [0])
    with pytest.raises(TypeError, match="class"):
        DG.register_customized_layer(model.a, object())
    with pytest.raises(AttributeError, match="prune_nothing_out_channels"):
        tp.prune_nothing_out_channels  # noqa: B018


def test_group_prune_with_new_indices_and_in_channel_trigger() -> None:
    model = TwoBranch()
    DG = tp.DependencyGraph().build_dependency(model, X)
    group = DG.get_pruning_group(model.mix, tp.prune_conv_in_channels, [4])
    assert {dep.target.name for dep, _ in group} == {"b", "mix"}
    group.prune(idxs=[0, 1])  # re-derived for the root's new indices
    assert model.mix.in_channels == 8 and model.a.out_channels == 2 and model.b.out_channels == 6


def test_pruning_works_for_every_functional_trigger_of_bn() -> None:
    model = nn.Sequential(nn.Conv2d(3, 6, 1), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 2, 1))
    DG = tp.DependencyGraph().build_dependency(model, X)
    group = DG.get_pruning_group(model[1], tp.prune_batchnorm_out_channels, [1])
    assert {dep.target.name for dep, _ in group} == {"0", "1", "3"}
    group.prune()
    assert model[1].num_features == 5 and model(X).shape == (1, 2, 8, 8)


def _grouping(model: nn.Module, x) -> tuple[str, list]:
    DG = tp.DependencyGraph().build_dependency(model, x)
    groups = [[(dep.target.name, tp.graph.function_name(dep.handler), idxs) for dep, idxs in g] for g in DG.get_all_groups()]
    return DG._trace.mode, groups


class DataDependent(nn.Module):
    """Its branch depends on values: a shapes-only trace cannot decide it, a real one can."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = nn.Conv2d(3, 6, 1), nn.Conv2d(6, 6, 3, padding=1), nn.Conv2d(6, 2, 1)

    def forward(self, x):
        y = F.relu(self.a(x))
        if bool(y.mean() > -1):  # always true, but only values can tell
            y = y + self.b(y)
        return self.head(y)


@pytest.mark.parametrize("model_fn", [TwoBranch, DataDependent])
def test_both_tracing_modes_give_the_same_graph(model_fn, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = model_fn()
    mode, fast = _grouping(model, X)
    monkeypatch.setenv("PRUNEFRAME_TRACE", "real")
    real_mode, real = _grouping(model, X)
    assert real_mode == "real" and fast == real and fast
    assert mode == ("real" if model_fn is DataDependent else "shapes")  # the data-dependent model fell back


@pytest.mark.parametrize("enabled_before", [True, False])
def test_the_trace_pauses_garbage_collection_and_restores_it(enabled_before: bool) -> None:
    import gc

    seen = []

    def forward(model, x):
        seen.append(gc.isenabled())
        return model(x)

    was = gc.isenabled()
    (gc.enable if enabled_before else gc.disable)()
    try:
        tp.DependencyGraph().build_dependency(TwoBranch(), X, forward_fn=forward)
        after = gc.isenabled()
    finally:
        (gc.enable if was else gc.disable)()
    assert seen and not any(seen)  # no collection while the model ran under the tracer
    assert after is enabled_before


def test_a_group_exposes_its_coupling_as_public_records() -> None:
    """Criteria and pruners read groups through Dependency.kind and Group.members(), never handler names."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 4))
    DG = tp.DependencyGraph().build_dependency(model, torch.randn(1, 3, 8, 8))
    group = DG.get_pruning_group(model[0], tp.prune_conv_out_channels, idxs=[1, 5])
    assert [(dep.target.name, dep.kind) for dep, _ in group] == [("0", "out"), ("1", "out"), ("4", "in")]
    assert group.root is DG.module2node[model[0]] and group.root_space is group.root.out_space
    members = group.members()
    assert [m.layer for m in members] == [model[0], model[1], model[4]]
    flat = members[2]  # each conv channel is 36 inputs of the linear layer, all going with that root index
    assert flat.idxs.tolist() == [*range(36, 72), *range(180, 216)]
    assert flat.root_pos.tolist() == [0] * 36 + [1] * 36 and flat.idxs[flat.member_pos].tolist() == flat.idxs.tolist()
    with pytest.raises(AttributeError):
        members[0].node = None  # frozen records
    group.prune()
    with pytest.raises(ValueError, match="older than a prune"):
        group.members()


class HeadDimsTied(nn.Module):
    """A softmax over each head's 4 dims ties dim j of head 0 to dim j of head 1: blocks of several root indices."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x).view(-1, 2, 4).softmax(-1).flatten(1))


def test_members_of_tied_blocks_move_values_like_their_channel_root_pairs() -> None:
    """Member.to_roots / from_roots / covered_roots work per block, and agree with summing over every (channel, root) pair."""
    model = HeadDimsTied()
    DG = tp.DependencyGraph().build_dependency(model, torch.randn(2, 4))
    group = DG.get_pruning_group(model.a, tp.prune_linear_out_channels, idxs=[0, 4, 1, 5])
    assert group.root_idxs == [0, 1, 4, 5] and group.root_block_labels().tolist() == [0, 1, 0, 1]
    member = group.members()[1]
    assert member.layer is model.b and member.blocks == 2 and member.member_block.tolist() == [0, 1, 0, 1]
    pairs = sorted(zip(member.member_pos.tolist(), member.root_pos.tolist()))
    assert pairs == [(m, r) for m in range(4) for r in range(4) if m % 2 == r % 2]  # channel 0 goes with roots 0 and 4, ...
    values = torch.tensor([1.0, 10.0, 100.0, 1000.0])
    by_pairs = torch.zeros(4).index_add_(0, member.root_pos, values[member.member_pos])
    assert member.to_roots(values).tolist() == by_pairs.tolist() == [101.0, 1010.0, 101.0, 1010.0]
    assert member.from_roots(values).tolist() == [101.0, 1010.0, 101.0, 1010.0]
    assert member.from_roots(values, mean=True).tolist() == [50.5, 505.0, 50.5, 505.0]
    assert member.covered_roots().all() and member.first_channel_per_root().tolist() == [0, 1, 0, 1]


def test_a_graph_build_leaves_the_collector_as_it_was() -> None:
    """The heap is frozen for the build (collections skip old objects) and unfrozen after, also when the build fails."""
    import gc

    before = gc.get_freeze_count()
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    tp.DependencyGraph().build_dependency(model, torch.randn(1, 4))
    assert gc.get_freeze_count() == before
    with pytest.raises(Exception):
        tp.DependencyGraph().build_dependency(model, torch.randn(1, 7))
    assert gc.get_freeze_count() == before


def test_a_training_mode_model_that_cannot_run_on_the_inputs_is_traced_in_eval_mode() -> None:
    """BatchNorm on one value per channel fails in training mode; the graph is the eval-mode one, the flags stay."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8, 2)).train()
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        model(x)
    DG = tp.DependencyGraph().build_dependency(model, x)
    assert all(m.training for m in model.modules())
    DG.get_pruning_group(model[0], tp.prune_conv_out_channels, [0, 3]).prune()
    assert model[2].num_features == 6 and model[4].in_features == 6
    assert model.eval()(x).shape == (1, 2)


def test_load_pruning_history_replays_a_graphs_prunes_on_a_fresh_model() -> None:
    torchvision = pytest.importorskip("torchvision")
    x = torch.randn(1, 3, 32, 32)
    first = torchvision.models.resnet18(weights=None).eval()
    dg = tp.DependencyGraph().build_dependency(first, example_inputs=x)
    dg.get_pruning_group(first.conv1, tp.prune_conv_out_channels, [0, 5, 9]).prune()
    dg.get_pruning_group(first.layer2[0].conv1, tp.prune_conv_out_channels, [1, 2]).prune()
    for history in (dg.pruning_history(), [["conv1", True, [0, 5, 9]], ["layer2.0.conv1", True, [1, 2]]]):  # ours, TP's
        fresh = torchvision.models.resnet18(weights=None).eval()
        tp.DependencyGraph().build_dependency(fresh, example_inputs=x).load_pruning_history(history)
        assert [tuple(p.shape) for p in fresh.parameters()] == [tuple(p.shape) for p in first.parameters()]


def test_load_pruning_history_is_all_or_nothing() -> None:
    torchvision = pytest.importorskip("torchvision")
    x = torch.randn(1, 3, 32, 32)
    model = torchvision.models.resnet18(weights=None).eval()
    before = [tuple(p.shape) for p in model.parameters()]
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=x)
    with pytest.raises(IndexError, match="out of range"):
        dg.load_pruning_history([["conv1", True, [0, 1]], ["layer2.0.conv1", True, [500]]])
    assert [tuple(p.shape) for p in model.parameters()] == before
    with pytest.raises(tp.PruningError, match="'features.0'.*another architecture"):
        dg.load_pruning_history([["features.0", True, [0]]])
    with pytest.raises(TypeError, match="pruning_history"):
        dg.load_pruning_history([42])


def test_groups_drawn_one_at_a_time_are_the_groups_get_all_groups_gives() -> None:
    """MetaPruner draws a step's groups one at a time so it can let go of each (a 70B model's groups are big)."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    DG = tp.DependencyGraph().build_dependency(model, torch.randn(1, 3, 12, 12))

    def described(groups):
        return [[(dep.target.name, dep.kind, list(idxs)) for dep, idxs in group] for group in groups]

    eager = described(DG.get_all_groups(ignored_layers=[model[7]]))
    assert len(eager) == 2 and described(DG.groups_one_at_a_time(ignored_layers=[model[7]])) == eager
    lazy = DG.groups_one_at_a_time(ignored_layers=[model[7]])
    first = next(lazy)
    assert described([first]) == eager[:1]
    DG.get_pruning_group(model[3], tp.prune_conv_out_channels, [0, 1]).prune()  # pruned while iterating
    [second] = described(lazy)
    assert second[0] == ("3", "out", list(range(6)))  # drawn after the prune: its current channels, none offered twice
