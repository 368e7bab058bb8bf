"""A hand-written mixture of experts pruned through the dependency graph, with no transformers involved.

The experts keep their weights fused (``gate_up [E, 2I, H]``, ``down [E, H, I]``) and read the router's
top-k indices, so no tensor shows the expert width or the expert count. A plugin made here serves them the
way ``pruneframe-transformers`` does: layer pruners found by ``find`` (no class listed up front), an inner
width (``inner_channels``), the expert dimension as raw-parameter spaces (``parameter_spaces``) and a module
hint that couples them with the router's rows (``ModuleHints.couple``). Every prune is compared, in float64,
with the original model where the removed units, experts or channels are masked.
"""
from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import nn

import pruneframe as tp
from pruneframe.errors import PruningError
from pruneframe.layer_pruner import ChannelDim, keep_index, select_, validate_idxs
from pruneframe.registry import build_registry

E, H, INNER, TOP_K = 4, 6, 5, 2


class Router(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(E, H, dtype=torch.float64))
        self.top_k = TOP_K
        self.masked: list[int] = []  # the reference model: these experts are never chosen

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits = x @ self.weight.T
        if self.masked:
            logits = logits.index_fill(-1, torch.tensor(self.masked), float("-inf"))
        scores, index = torch.softmax(logits, -1).topk(self.top_k, dim=-1)
        return logits, scores, index


class Experts(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gate_up = nn.Parameter(torch.randn(E, 2 * INNER, H, dtype=torch.float64))
        self.down = nn.Parameter(torch.randn(E, H, INNER, dtype=torch.float64))
        self.num_experts = E

    def forward(self, x: torch.Tensor, index: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(x)
        for e in range(self.num_experts):
            rows, slot = torch.where(index == e)
            gate, up = (x[rows] @ self.gate_up[e].T).chunk(2, dim=-1)
            out = out.index_add(0, rows, ((torch.nn.functional.silu(gate) * up) @ self.down[e].T) * scores[rows, slot, None])
        return out


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.router = Router()
        self.experts = Experts()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, scores, index = self.router(x)
        return self.experts(x, index, scores)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc_in = nn.Linear(3, H, dtype=torch.float64)
        self.block = Block()
        self.fc_out = nn.Linear(H, 2, dtype=torch.float64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc_in(x)
        return self.fc_out(h + self.block(h))


class RouterPruner(tp.DeclarativeLayerPruner):
    tensors = (tp.TensorDims("weight", out=0, in_=1),)
    output_dim = -1
    input_dim = -1

    def check_prune(self, layer: nn.Module, kind: str, idxs: Any) -> str | None:
        left = layer.weight.shape[0] - len(idxs)
        return f"{left} experts left, fewer than top-k {layer.top_k}" if kind == "out" and left < layer.top_k else None


class ExpertsPruner(tp.LayerPruner):
    """Output channels: each expert's units (unit u from every expert); inputs and outputs: the hidden size."""

    def get_out_channels(self, layer: nn.Module) -> int:
        return layer.down.shape[2]

    def get_in_channels(self, layer: nn.Module) -> int:
        return layer.down.shape[1]

    def inner_channels(self, layer: nn.Module) -> int:
        return layer.down.shape[2]

    def parameter_spaces(self, layer: nn.Module) -> list[tuple[str, int]]:
        return [("gate_up", 0), ("down", 0)]

    def input_channel_dims(self, layer: nn.Module, inputs: Any) -> list[ChannelDim | None]:
        return [ChannelDim(-1)] + [None] * (len(inputs) - 1)

    def output_channel_dims(self, layer: nn.Module, outputs: Any) -> list[ChannelDim | None]:
        return [ChannelDim(-1)]

    def prune_out_channels(self, layer: nn.Module, idxs: Any) -> nn.Module:
        width = layer.down.shape[2]
        keep = keep_index(width, validate_idxs(layer, idxs, width, "unit"))
        select_(layer, "gate_up", 1, torch.cat([keep, keep + width]))
        select_(layer, "down", 2, keep)
        return layer

    def prune_in_channels(self, layer: nn.Module, idxs: Any) -> nn.Module:
        hidden = layer.down.shape[1]
        keep = keep_index(hidden, validate_idxs(layer, idxs, hidden, "hidden channel"))
        select_(layer, "gate_up", 2, keep)
        select_(layer, "down", 1, keep)
        return layer


def _blocks(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(getattr(m, "router", None), Router)]


def _couple(block: nn.Module, hints: Any) -> None:
    for name in ("gate_up", "down"):
        hints.couple(block.router, "out", getattr(block.experts, name), "out", "the router picks experts by index")


def _counts(block: nn.Module) -> None:
    block.experts.num_experts = block.router.weight.shape[0]


class MoePlugin:
    @tp.hookimpl
    def pruneframe_layer_pruners(self, register: Any) -> None:
        register(RouterPruner(), name="test_router", find=lambda model: [b.router for b in _blocks(model)])
        register(ExpertsPruner(), name="test_experts", find=lambda model: [b.experts for b in _blocks(model)])

    @tp.hookimpl
    def pruneframe_module_hints(self, register: Any) -> None:
        register([], _couple, name="test-routing", find=_blocks)

    @tp.hookimpl
    def pruneframe_fixups(self, register: Any) -> None:
        register([], _counts, name="test-counts", find=_blocks)


X = torch.randn(16, 3, dtype=torch.float64)


def _net() -> Net:
    torch.manual_seed(0)
    return Net()


def _graph(model: nn.Module, registry: Any) -> tp.DependencyGraph:
    return tp.DependencyGraph(registry=registry).build_dependency(model, example_inputs=X)


@pytest.fixture(scope="module")
def registry() -> Any:
    return build_registry(extra_plugins=[("moe-test", MoePlugin())])


def test_classes_found_by_a_finder_are_served_only_once_a_model_shows_them(registry: Any) -> None:
    assert registry.layer_pruner(Experts) is None  # nothing lists Experts: the finder has not seen a model yet
    registry.discover(nn.Sequential(nn.Linear(2, 2)))
    assert registry.layer_pruner(Experts) is None
    registry.discover(_net())
    assert isinstance(registry.layer_pruner(Experts), ExpertsPruner) and isinstance(registry.layer_pruner(Router), RouterPruner)
    listed = next(p for p in registry.describe() if p["name"] == "moe-test")
    assert {f"{__name__}.Experts", f"{__name__}.Router", f"{__name__}.Block"} <= set(listed["module_types"])


def test_the_expert_width_is_one_space_pruned_alike_in_every_expert(registry: Any) -> None:
    model = _net()
    reference = copy.deepcopy(model)
    graph = _graph(model, registry)
    assert graph.get_out_channels(model.block.experts) == INNER and graph.get_in_channels(model.block.experts) == H
    group = graph.get_pruning_group(model.block.experts, ExpertsPruner().prune_out_channels, [1, 3])
    assert [(dep.target.name, dep.kind) for dep, _ in group] == [("block.experts", "out")]
    group.prune()
    assert tuple(model.block.experts.down.shape) == (E, H, INNER - 2)
    assert tuple(model.block.experts.gate_up.shape) == (E, 2 * (INNER - 2), H)
    with torch.no_grad():
        reference.block.experts.down[:, :, [1, 3]] = 0  # a unit whose output weights are zero adds nothing
    torch.testing.assert_close(model(X), reference(X), rtol=0, atol=1e-12)


def test_whole_experts_go_with_the_router_rows_and_the_counts_follow(registry: Any) -> None:
    model = _net()
    reference = copy.deepcopy(model)
    graph = _graph(model, registry)
    group = graph.get_pruning_group(model.block.router, RouterPruner().prune_out_channels, [2])
    assert sorted((dep.target.name, dep.kind) for dep, _ in group) == [
        ("block.experts.down", "out"), ("block.experts.gate_up", "out"), ("block.router", "out")]
    group.prune()
    assert model.block.router.weight.shape == (E - 1, H) and model.block.experts.num_experts == E - 1
    assert model.block.experts.gate_up.shape[0] == model.block.experts.down.shape[0] == E - 1
    reference.block.router.masked = [2]
    torch.testing.assert_close(model(X), reference(X), rtol=0, atol=1e-12)


def test_a_router_keeps_at_least_top_k_experts(registry: Any) -> None:
    model = _net()
    graph = _graph(model, registry)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    group = graph.get_pruning_group(model.block.router, RouterPruner().prune_out_channels, [0, 1, 2])
    assert not graph.check_pruning_group(group)
    with pytest.raises(PruningError, match="1 experts left, fewer than top-k 2"):
        group.prune()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_the_hidden_size_runs_through_router_and_experts_like_any_layer(registry: Any) -> None:
    model = _net()
    reference = copy.deepcopy(model)
    graph = _graph(model, registry)
    group = graph.get_pruning_group(model.fc_in, tp.prune_linear_out_channels, [4])
    assert sorted((dep.target.name, dep.kind) for dep, _ in group) == [
        ("block.experts", "in"), ("block.router", "in"), ("fc_in", "out"), ("fc_out", "in")]
    group.prune()
    assert tuple(model.block.experts.down.shape) == (E, H - 1, INNER) and model.block.router.weight.shape == (E, H - 1)
    with torch.no_grad():  # the channel is zero everywhere it is read, and what the experts write into it is never read
        reference.fc_in.weight[4] = 0
        reference.fc_in.bias[4] = 0
        reference.fc_out.weight[:, 4] = 0
    torch.testing.assert_close(model(X), reference(X), rtol=0, atol=1e-12)


def test_all_groups_root_widths_and_experts_and_a_plan_replays_them(registry: Any) -> None:
    model = _net()
    graph = _graph(model, registry)
    roots = {group.root.name for group in graph.get_all_groups(ignored_layers=[model.fc_in])}
    assert roots == {"block.experts", "block.router"}  # the hidden size is the ignored fc_in's output
    graph.get_pruning_group(model.block.router, RouterPruner().prune_out_channels, [0]).prune()
    graph.get_pruning_group(model.block.experts, ExpertsPruner().prune_out_channels, [2]).prune()
    fresh = _net()
    tp.load_state_dict(fresh, state_dict=tp.state_dict(model), registry=registry)
    assert fresh.block.experts.num_experts == E - 1 and tuple(fresh.block.experts.down.shape) == (E - 1, H, INNER - 1)
    torch.testing.assert_close(fresh(X), model(X), rtol=0, atol=0)


def test_a_hint_coupling_spaces_of_different_sizes_keeps_both_whole() -> None:
    class Mismatched(MoePlugin):
        @tp.hookimpl
        def pruneframe_module_hints(self, register: Any) -> None:
            register([], lambda block, hints: hints.couple(block.router, "out", block.experts, "out", "r"), name="bad",
                     find=_blocks)

    registry = build_registry(extra_plugins=[("moe-bad", Mismatched())])
    model = _net()
    graph = _graph(model, registry)
    group = graph.get_pruning_group(model.block.router, RouterPruner().prune_out_channels, [0])
    assert not graph.check_pruning_group(group)
    assert any("couples channels it cannot match (they have 4 and 5 channels)" in p for p in group.problems())
