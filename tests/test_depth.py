"""Depth pruning on plain modules: layer lists found structurally, blocks removed and renumbered, the plan replaying it,
bad choices refused with the model untouched, and block influence scored over calibration batches."""
from __future__ import annotations

import collections

import pytest
import torch
from torch import nn

import pruneframe as tp
from pruneframe.errors import ModelStopsRunningError, PruningError
from pruneframe.importance import BlockInfluenceImportance, NotCalibratedError
from pruneframe.pruner import LayerScore, layer_lists, rank_layers, remove_layers
from pruneframe.pruner.depth import position_history
from pruneframe.registry import Registry, get_registry
from pruneframe.registry.entries import ModuleHookEntry


class Block(nn.Module):
    """A residual block that stores its position, as a decoder layer's attention does for its key/value cache."""

    def __init__(self, width: int, layer_idx: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, 2 * width)
        self.fc2 = nn.Linear(2 * width, width)
        self.layer_idx = layer_idx

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(torch.relu(self.fc1(self.norm(x))))


class Stack(nn.Module):
    def __init__(self, depth: int = 5, width: int = 8):
        super().__init__()
        self.embed = nn.Linear(3, width)
        self.layers = nn.ModuleList(Block(width, i) for i in range(depth))
        self.head = nn.Linear(width, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        for block in self.layers:
            x = block(x)
        return self.head(x)


class EncoderDecoder(nn.Module):
    """Two layer lists, so a bare position is ambiguous."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.ModuleList(Block(8, i) for i in range(3))
        self.decoder = nn.ModuleList(Block(8, i) for i in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in [*self.encoder, *self.decoder]:
            x = block(x)
        return x


def _model(seed: int = 0, depth: int = 5) -> Stack:
    torch.manual_seed(seed)
    return Stack(depth).eval()


X = torch.randn(2, 4, 3, generator=torch.Generator().manual_seed(1))


def _without(model: Stack, gone: set[int]) -> nn.Module:
    """The original model's layers minus ``gone``, composed by hand: what removing them must compute."""
    kept = [b for k, b in enumerate(model.layers) if k not in gone]
    return nn.Sequential(model.embed, *kept, model.head)


def _snapshot(model: nn.Module) -> tuple[list[str], torch.Tensor]:
    with torch.no_grad():
        return list(model.state_dict()), model(X)


def test_layer_lists_are_found_structurally():
    found = layer_lists(_model())
    assert [(ll.name, len(ll), ll.removable) for ll in found] == [("layers", 5, (0, 1, 2, 3, 4))]
    assert found[0].block_name(3) == "layers.3"


def test_a_block_with_another_layout_is_not_removable():
    model = _model()
    model.layers[0].proj = nn.Linear(8, 8)  # like a stage's first block with its downsampling projection
    assert layer_lists(model)[0].removable == (1, 2, 3, 4)
    before = _snapshot(model)
    with pytest.raises(ValueError, match=r"layers\.0 \(Block\) differs in layout.*removable positions: 1, 2, 3, 4"):
        remove_layers(model, ["layers.0"])
    after = _snapshot(model)
    assert before[0] == after[0] and torch.equal(before[1], after[1])


def test_removing_layers_computes_what_the_kept_layers_compute():
    model = _model()
    with torch.no_grad():
        expected = _without(model, {1, 3})(X)
    removed = remove_layers(model, [model.layers[3], "layers.1"])
    assert removed == ["layers.1", "layers.3"]
    assert len(model.layers) == 3
    assert [b.layer_idx for b in model.layers] == [0, 1, 2]  # renumbered: the key/value cache indexes by it
    assert sorted({k.split(".")[1] for k in model.state_dict() if k.startswith("layers.")}) == ["0", "1", "2"]
    assert position_history(model.layers) == [[0, 1, 2, 3, 4], [0, 2, 4]]
    with torch.no_grad():
        assert torch.equal(model(X), expected)


def test_positions_and_layer_scores_name_blocks_too():
    model = _model()
    removed = remove_layers(model, [-1, LayerScore("layers.0", "layers", 0, 0.1)])
    assert removed == ["layers.0", "layers.4"]
    assert [b.layer_idx for b in model.layers] == [0, 1, 2]


def test_a_named_sequential_keeps_its_names():
    torch.manual_seed(0)
    blocks = nn.Sequential(collections.OrderedDict((f"block{i}", Block(8, i)) for i in range(3)))
    remove_layers(blocks, ["block1"])
    assert list(blocks._modules) == ["block0", "block2"]
    assert [b.layer_idx for b in blocks] == [0, 1]


@pytest.mark.parametrize("choice, message", [
    (["layers.9"], r"no module 'layers\.9'; its layer lists: layers \(5 blocks\)"),
    (["layers.2", 2], r"layers\.2 is named twice \('layers\.2' and 2\)"),
    ([0, 1, 2, 3, 4], r"remove all 5 blocks of layers; keep at least one"),
    (["embed"], r"embed \(Linear\) is not a block of a layer list"),
    (["layers"], r"layers is a layer list, not a block; name the blocks to remove, such as 'layers\.0'"),
    ([7], r"position 7 is out of range: layers has 5 blocks"),
    ([nn.Linear(2, 2)], r"a Linear is not part of this model"),
])
def test_bad_choices_are_refused_before_anything_changes(choice, message):
    model = _model()
    before = _snapshot(model)
    with pytest.raises(ValueError, match=message):
        remove_layers(model, choice)
    after = _snapshot(model)
    assert before[0] == after[0] and torch.equal(before[1], after[1])
    assert tp.state_dict(model)["pruning_plan"]["steps"] == []


def test_wrong_types_are_refused():
    with pytest.raises(TypeError, match=r"1\.5 \(float\) is not a block"):
        remove_layers(_model(), [1.5])
    with pytest.raises(TypeError, match=r"not a float"):
        remove_layers(_model(), 1.5)


def test_a_position_is_ambiguous_with_two_layer_lists():
    with pytest.raises(ValueError, match=r"position 1 is ambiguous: the model has 2 layer lists \(encoder \(3 blocks\), "
                                         r"decoder \(3 blocks\)\)"):
        remove_layers(EncoderDecoder(), [1])


def test_a_removal_the_model_cannot_run_without_is_undone():
    torch.manual_seed(0)
    # same class and layout, different widths: removing the middle block breaks the chain of shapes
    model = nn.Sequential(nn.Sequential(nn.Linear(3, 4)), nn.Sequential(nn.Linear(4, 5)), nn.Sequential(nn.Linear(5, 2)))
    x = torch.randn(2, 3)
    before = model(x)
    with pytest.raises(ModelStopsRunningError, match=r"after removing 1 the model no longer runs.*It was undone|"
                                                     r"after removing 1 the model no longer runs.*it was undone"):
        remove_layers(model, [1], example_inputs=x)
    assert len(model) == 3 and torch.equal(model(x), before)
    assert tp.state_dict(model)["pruning_plan"]["steps"] == []


def test_the_plan_replays_removed_layers_on_a_fresh_model():
    model = _model()
    remove_layers(model, ["layers.1"])
    remove_layers(model, ["layers.2"])  # the original layers.3
    with torch.no_grad():
        expected = model(X)
    state = tp.state_dict(model)
    assert state["pruning_plan"]["version"] == 2
    assert state["pruning_plan"]["steps"] == [[{"layer": "layers", "kind": "depth", "idxs": [1]}],
                                              [{"layer": "layers", "kind": "depth", "idxs": [2]}]]
    fresh = _model(seed=5)
    tp.load_state_dict(fresh, state_dict=state)
    assert [b.layer_idx for b in fresh.layers] == [0, 1, 2]
    with torch.no_grad():
        assert torch.equal(fresh(X), expected)
    plan = tp.plan.plan_from_json(tp.plan.plan_to_json(model))
    again = _model(seed=6)
    tp.plan.apply_plan(again, plan)
    assert len(again.layers) == 3


def test_channel_prunes_before_and_after_a_removal_replay_by_their_names_at_the_time():
    model = _model()
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=X)
    graph.get_pruning_group(model.layers[3].fc1, tp.prune_linear_out_channels, idxs=[0, 1, 2]).prune()
    remove_layers(model, ["layers.1"])
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=X)  # the old graph names removed modules
    graph.get_pruning_group(model.layers[2].fc1, tp.prune_linear_out_channels, idxs=[4]).prune()  # layers.2 = original 3
    graph.get_pruning_group(model.layers[3].fc1, tp.prune_linear_out_channels, idxs=[5, 6]).prune()  # original 4
    with torch.no_grad():
        expected = model(X)
    fresh = _model(seed=3)
    tp.load_state_dict(fresh, state_dict=tp.state_dict(model))
    assert [b.fc1.out_features for b in fresh.layers] == [16, 16, 12, 14]
    with torch.no_grad():
        assert torch.equal(fresh(X), expected)


def test_plans_without_depth_steps_are_still_version_1_and_load():
    model = _model()
    old_plan = {"format": "pruneframe-pruning-plan", "version": 1,
                "steps": [[{"layer": "layers.0.fc1", "kind": "out", "idxs": [0, 1]},
                           {"layer": "layers.0.fc2", "kind": "in", "idxs": [0, 1]}]]}
    tp.plan.apply_plan(model, old_plan)
    assert model.layers[0].fc1.out_features == 14
    assert tp.plan.get_plan(model)["version"] == 1
    with pytest.raises(ValueError, match=r"malformed pruning plan entry.*'kind' \(out/in\)"):
        tp.plan.apply_plan(_model(), {**old_plan, "steps": [[{"layer": "layers", "kind": "depth", "idxs": [1]}]]})


def test_a_depth_step_that_does_not_fit_is_refused_and_the_model_left_alone():
    plan = {"format": "pruneframe-pruning-plan", "version": 2, "steps": [[{"layer": "layers", "kind": "depth", "idxs": [7]}]]}
    model = _model()
    with pytest.raises(PruningError, match=r"block 7 is out of range for its 5 blocks"):
        tp.plan.apply_plan(model, plan)
    assert len(model.layers) == 5
    with pytest.raises(PruningError, match=r"'embed' is a Linear, not a ModuleList or Sequential"):
        tp.plan.apply_plan(model, {**plan, "steps": [[{"layer": "embed", "kind": "depth", "idxs": [0]}]]})


def test_block_influence_is_one_minus_the_cosine_of_input_and_output():
    model = _model()
    with torch.no_grad():
        model.layers[2].fc2.weight.zero_()
        model.layers[2].fc2.bias.zero_()  # an identity block: no influence at all
        hidden = model.embed(X)
        inputs = []
        for block in model.layers:
            inputs.append(hidden)
            hidden = block(hidden)
        expected_1 = (1 - torch.cosine_similarity(inputs[1], inputs[2], dim=-1)).mean().item()
    training = [m.training for m in model.modules()]
    ranked = rank_layers(model, [X, X])
    assert ranked[0].name == "layers.2" and ranked[0].score == pytest.approx(0.0, abs=1e-7)
    assert {s.name: s.score for s in ranked}["layers.1"] == pytest.approx(expected_1, rel=1e-5)
    assert sorted(s.score for s in ranked) == [s.score for s in ranked]
    assert all(not m._forward_hooks for m in model.modules())
    assert [m.training for m in model.modules()] == training
    removed = remove_layers(model, ranked[:1])
    assert removed == ["layers.2"]


def test_blocks_that_do_not_form_a_stack_are_not_scored():
    class Experts(nn.Module):  # blocks side by side on one input: not a stack
        def __init__(self):
            super().__init__()
            self.experts = nn.ModuleList(Block(8, i) for i in range(3))

        def forward(self, x):
            return sum(e(x) for e in self.experts)

    imp = BlockInfluenceImportance()
    with pytest.raises(NotCalibratedError, match=r"experts: block 1 does not receive what block 0 returned"):
        rank_layers(Experts().eval(), [torch.randn(2, 8)], importance=imp)

    class Widening(nn.Module):
        def __init__(self):
            super().__init__()
            self.stages = nn.ModuleList(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 6)) for _ in range(2))

        def forward(self, x):
            return [s(x) for s in self.stages]

    with pytest.raises(NotCalibratedError, match=r"stages\.0: it maps \(2, 4\) to \(2, 6\)"):
        rank_layers(Widening().eval(), [torch.randn(2, 4)])


def test_a_first_block_that_changes_the_shape_leaves_the_rest_of_its_list_scored():
    torch.manual_seed(0)
    widen = nn.Sequential(nn.Linear(3, 8), nn.ReLU())
    model = nn.Sequential(widen, Block(8, 0), Block(8, 1)).eval()  # like a ResNet stage: its first block widens
    imp = BlockInfluenceImportance()
    ranked = rank_layers(model, [torch.randn(2, 3)], importance=imp)
    assert sorted(s.name for s in ranked) == ["1", "2"]
    assert imp.skipped() == {"0": "it maps (2, 3) to (2, 8); only blocks that keep the shape can be scored (and removed)"}


def test_block_influence_only_ranks_removable_blocks_and_checks_its_arguments():
    model = _model()
    model.layers[0].proj = nn.Linear(8, 8)
    imp = BlockInfluenceImportance()
    ranked = rank_layers(model, [X], importance=imp)
    assert sorted(s.name for s in ranked) == ["layers.1", "layers.2", "layers.3", "layers.4"]
    assert "layers.0" in imp.scores()
    with pytest.raises(TypeError, match=r"iterable of batches.*not a Tensor"):
        rank_layers(model, X)
    with pytest.raises(ValueError, match=r"got no batches"):
        rank_layers(model, [])
    with pytest.raises(ValueError, match=r"layer_lists=\['blocks'\]: the model has no such layer list; it has \['layers'\]"):
        rank_layers(model, [X], importance=BlockInfluenceImportance(layer_lists=["blocks"]))
    with pytest.raises(ValueError, match=r"Linear has no layer list"):
        rank_layers(nn.Linear(3, 3), [torch.randn(1, 3)])
    with pytest.raises(PruningError, match=r"scores whole blocks, not the channels of a group"):
        imp(None)


def test_a_fixup_failing_undoes_the_removal():
    def broken(module: nn.Module) -> None:
        raise RuntimeError("Boom")

    registry = get_registry()
    entry = ModuleHookEntry((Block,), broken, "block-sizes", "a-plugin", False)
    failing = Registry(registry.plugins, registry.layer_pruners, registry.op_handlers, registry.hints,
                       [*registry.fixups, entry], registry.importances)
    model = _model()
    before = _snapshot(model)
    with pytest.raises(PruningError, match=r"the fix-up 'block-sizes' of plugin 'a-plugin' on Block failed: RuntimeError: "
                                           r"Boom.*restored"):
        remove_layers(model, ["layers.1"], registry=failing)
    after = _snapshot(model)
    assert before[0] == after[0] and torch.equal(before[1], after[1])
    assert [b.layer_idx for b in model.layers] == [0, 1, 2, 3, 4] and position_history(model.layers) == [[0, 1, 2, 3, 4]]
    assert tp.state_dict(model)["pruning_plan"]["steps"] == []


def test_a_graph_built_before_a_removal_refuses_to_prune_moved_layers():
    """The graph names layers by where they were: after remove_layers its groups would prune the wrong block."""
    model = _model()
    graph = tp.DependencyGraph().build_dependency(model, X)
    remove_layers(model, ["layers.1"])
    before = _snapshot(model)
    group = graph.get_pruning_group(model.layers[1].fc1, tp.prune_linear_out_channels, idxs=[0, 1])
    with pytest.raises(PruningError, match=r"layers\.\d\.fc1 \(Linear\) is no longer at that place in the model .* build the graph again"):
        group.prune()
    after = _snapshot(model)
    assert before[0] == after[0] and torch.equal(before[1], after[1])
