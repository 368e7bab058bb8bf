"""A failure at any position a plugin occupies leaves the model exactly as it was, and the error names the plugin.

One model holds a layer of every built-in layer pruner. Each test makes one
plugin's code raise -- a layer pruner's output or input pruning, an op
handler during tracing, a fix-up, an importance criterion -- and compares the
model's whole state (every tensor's values, shape and identity, every size
attribute, the pruning plan, the output) before and after.
"""
from __future__ import annotations

import copy
import functools
from typing import Any, Iterator

import attrs
import pytest
import torch
import torchvision
from torch import nn

import pruneframe as tp
from pruneframe.plan import get_plan
from pruneframe.registry import Registry, get_registry

SIZE_ATTRS = ("in_channels", "out_channels", "groups", "num_features", "in_features", "out_features", "normalized_shape",
              "num_channels", "embedding_dim", "num_parameters", "embed_dim", "hidden_size", "input_size", "hidden_dim")


class Everything(nn.Module):
    """Conv, transposed and depthwise conv, batch/group/instance/layer norm, PReLU, linear, raw parameter,
    multi-head attention, LSTM and an embedding, all on paths that prune."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.gn = nn.GroupNorm(4, 8)
        self.up = nn.ConvTranspose2d(8, 8, 2, stride=2)
        self.inorm = nn.InstanceNorm2d(8, affine=True)
        self.prelu = nn.PReLU(8)
        self.proj = nn.Linear(8, 16)
        self.scale = nn.Parameter(torch.ones(16))
        self.ln = nn.LayerNorm(16)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.emb = nn.Embedding(10, 16)
        self.rnn = nn.LSTM(16, 12, batch_first=True)
        self.head = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        y = self.gn(self.dw(torch.relu(self.bn(self.conv(x)))))
        y = self.prelu(self.inorm(self.up(y)))
        tokens = y.flatten(2).transpose(1, 2)[:, :6]  # (batch, 6, 8)
        t = self.ln(self.proj(tokens) * self.scale + self.emb(ids))
        t = t + self.attn(t, t, t, need_weights=False)[0]
        out, _ = self.rnn(t)
        return self.head(out[:, -1])


class Ops(nn.Module):
    """Functional ops of every kind the built-in op plugins handle, on prunable channels."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 8, 1), nn.Conv2d(16, 8, 1)
        self.vol = nn.Conv3d(3, 8, 1)
        self.lin = nn.Linear(8, 8)
        self.table = nn.Parameter(torch.randn(10, 8))
        self.out = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        y = torch.cat([self.a(x), self.b(x)], 1)
        y = torch.nn.functional.pad(torch.nn.functional.channel_shuffle(y, 2), (1, 1, 1, 1))
        p, q = torch.nn.functional.max_pool2d(y, 2).chunk(2, dim=1)
        y = self.c(torch.nn.functional.group_norm(torch.cat([p, q], 1), 4)).detach()
        v = torch.nn.functional.avg_pool3d(self.vol(x.unsqueeze(2).expand(-1, -1, 2, -1, -1)), (2, 1, 1)).squeeze(2)
        t = torch.nn.functional.layer_norm((y.mean((2, 3), keepdim=True) + v).flatten(2).transpose(1, 2), (8,))
        t = t + torch.softmax(t @ t.transpose(1, 2), -1) @ t * torch.softmax(t, 1)
        t = t + torch.nn.functional.scaled_dot_product_attention(t, t, t)
        t = t + torch.nn.functional.embedding(ids, self.table).mean(1, keepdim=True)
        n = torch.linalg.vector_norm(t, dim=1) + t[:, torch.tensor([0, 2])].sum(1)
        n = n + torch.nn.functional.interpolate(t.transpose(1, 2), scale_factor=2, mode="nearest").amax(-1)
        return self.out(self.lin(n).unsqueeze(1).expand(-1, 2, -1).sum(1))


def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 3, 4, 4, generator=g), torch.randint(0, 10, (2, 6), generator=g)


def state(model: nn.Module) -> dict[str, Any]:
    """Everything a prune may change: tensors (values, shapes, identity), size attributes, the plan, the output."""
    tensors = {n: (t.detach().clone(), id(t)) for n, t in [*model.named_parameters(), *model.named_buffers()]}
    sizes = {f"{name}.{a}": copy.deepcopy(getattr(m, a)) for name, m in model.named_modules() for a in SIZE_ATTRS if hasattr(m, a)}
    with torch.no_grad():
        out = model.eval()(*inputs())
    return {"tensors": tensors, "sizes": sizes, "plan": get_plan(model), "out": out}


def assert_same(before: dict[str, Any], after: dict[str, Any]) -> None:
    assert after["sizes"] == before["sizes"] and after["plan"] == before["plan"]
    assert after["tensors"].keys() == before["tensors"].keys()
    for k, (t, ident) in before["tensors"].items():
        now, now_ident = after["tensors"][k]
        assert now_ident == ident, f"{k} is another tensor object"
        assert now.shape == t.shape and torch.equal(now, t), k
    assert torch.equal(after["out"], before["out"])


class Boom(RuntimeError):
    """The injected failure."""


def _raise(*args: Any, **kwargs: Any) -> None:
    raise Boom("injected")


def _small_groups(graph: tp.DependencyGraph) -> Iterator[tp.Group]:
    """Each group of the graph, reduced to its first block of root channels (all of them would empty the layer)."""
    for group in graph.get_all_groups():
        root = group[0].dep
        yield graph.get_pruning_group(root.target.module, root.trigger, group.root_blocks()[0])


def _positions() -> Iterator[tuple[str, str, str]]:
    """(layer, kind, plugin) of every member of every group of the model: each position a layer pruner is called at."""
    model = Everything()
    graph = tp.DependencyGraph().build_dependency(model, inputs())
    seen = set()
    for group in _small_groups(graph):
        for dep, _ in group:
            key = (dep.target.name, dep.kind, dep.target.plugin)
            if key not in seen:
                seen.add(key)
                yield key


POSITIONS = list(_positions())


def test_every_builtin_layer_pruner_takes_part() -> None:
    plugins = {plugin for _, _, plugin in POSITIONS}
    assert {"conv", "batchnorm", "groupnorm", "instancenorm", "prelu", "linear", "parameter", "layernorm",
            "multihead_attention", "embedding", "rnn"} <= plugins


@pytest.mark.parametrize("layer,kind,plugin", POSITIONS, ids=[f"{l}.{k}" for l, k, _ in POSITIONS])
def test_a_layer_pruner_failing_anywhere_changes_nothing(layer: str, kind: str, plugin: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = Everything()
    graph = tp.DependencyGraph().build_dependency(model, inputs())
    group = next(g for g in _small_groups(graph) if any((d.target.name, d.kind) == (layer, kind) for d, _ in g))
    target = next(d.target for d, _ in group if (d.target.name, d.kind) == (layer, kind))
    method = "prune_out_channels" if kind == "out" or target.kind == "parameter" or target.in_out_coupled else "prune_in_channels"
    before = state(model)
    original = getattr(type(target.pruner), method)

    def fails_on_target(self: Any, layer_: Any, idxs: Any, *args: Any, **kwargs: Any) -> Any:
        if layer_ is target.module:
            raise Boom("injected")
        return original(self, layer_, idxs, *args, **kwargs)

    monkeypatch.setattr(type(target.pruner), method, fails_on_target)
    failing = graph.get_pruning_group(group[0].dep.target.module, group[0].dep.trigger, group.root_idxs)
    with pytest.raises(tp.PruningError, match=rf"pruning {layer} \(.*of plugin '{plugin}' failed: Boom: injected.*as it was"):
        failing.prune()
    monkeypatch.undo()
    assert_same(before, state(model))
    group.prune()  # and the same group prunes once the plugin works
    assert model(*inputs()).shape == (2, 3)


def _with(registry: Registry, **changes: Any) -> Registry:
    return Registry(registry.plugins, changes.get("layers", registry.layer_pruners), changes.get("ops", registry.op_handlers),
                    registry.hints, changes.get("fixups", registry.fixups), registry.importances)


def _used_op_handlers() -> list[Any]:
    used: dict[int, Any] = {}
    registry = get_registry()

    def spy(entry: Any) -> Any:
        def handler(*args: Any, **kwargs: Any) -> None:
            used.setdefault(id(entry), entry)
            return entry.handler(*args, **kwargs)
        return attrs.evolve(entry, handler=handler)

    spied = _with(registry, ops=[spy(e) for e in registry.op_handlers])
    for model in (Everything(), Ops()):
        tp.DependencyGraph(registry=spied).build_dependency(model, inputs())
    return list(used.values())


OP_HANDLERS = _used_op_handlers()


def test_the_two_models_meet_nearly_every_builtin_op_handler() -> None:
    unused = {f"{e.plugin}:{e.name}" for e in get_registry().op_handlers} - {f"{e.plugin}:{e.name}" for e in OP_HANDLERS}
    assert unused <= {"ops_elementwise:copy"}, unused  # copy_ into a view is its own test (test_transactions)


@pytest.mark.parametrize("entry", OP_HANDLERS, ids=[f"{e.plugin}:{e.name}" for e in OP_HANDLERS])
@pytest.mark.parametrize("build", [Everything, Ops])
def test_an_op_handler_failing_during_the_trace_changes_nothing(entry: Any, build: type) -> None:
    registry = get_registry()
    failing = [attrs.evolve(e, handler=_raise) if e is entry else e for e in registry.op_handlers]
    model = build()
    before = state(model)
    try:
        tp.DependencyGraph(registry=_with(registry, ops=failing)).build_dependency(model, inputs())
    except tp.PruningError as exc:
        assert f"op handler '{entry.name}' of plugin '{entry.plugin}' failed on" in str(exc) and "Boom" in str(exc)
    else:
        assert entry not in _handlers_met_by(build), "the failing handler was met, yet the trace went on"
    assert_same(before, state(model))


def _handlers_met_by(build: type) -> list[Any]:
    used: dict[int, Any] = {}
    registry = get_registry()
    spied = _with(registry, ops=[attrs.evolve(e, handler=functools.partial(_record_use, used, e)) for e in registry.op_handlers])
    tp.DependencyGraph(registry=spied).build_dependency(build(), inputs())
    return list(used.values())


def _record_use(used: dict[int, Any], entry: Any, *args: Any, **kwargs: Any) -> None:
    used.setdefault(id(entry), entry)
    entry.handler(*args, **kwargs)


def test_a_fixup_failing_undoes_the_prune() -> None:
    """torchvision's ViT fix-up (its stored hidden_dim) fails: the prune that ran before it is undone."""
    registry = get_registry(torchvision.models.vit_b_16)
    [entry] = [e for e in registry.fixups if e.plugin == "torchvision_models"]
    failing = _with(registry, fixups=[attrs.evolve(e, function=_raise) if e is entry else e for e in registry.fixups])
    model = torchvision.models.VisionTransformer(image_size=16, patch_size=8, num_layers=1, num_heads=2, hidden_dim=8,
                                                 mlp_dim=16, num_classes=3).eval()
    x = torch.randn(1, 3, 16, 16)
    snapshot = {n: (t.detach().clone(), t.shape) for n, t in model.state_dict().items()}
    graph = tp.DependencyGraph(registry=failing).build_dependency(model, x)
    group = graph.get_pruning_group(model.encoder.layers[0].mlp[0], tp.prune_linear_out_channels, [0, 1])
    with pytest.raises(tp.PruningError, match=rf"the fix-up '{entry.name}' of plugin 'torchvision_models'.*Boom"):
        group.prune()
    assert all(torch.equal(t, snapshot[n][0]) for n, t in model.state_dict().items())
    assert model.encoder.layers[0].mlp[0].out_features == 16 and not get_plan(model)["steps"]


@pytest.mark.parametrize("name", sorted({e.name for e in get_registry().importances}))
def test_an_importance_failing_stops_the_step_before_anything_changes(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    entry = get_registry().importance_entry(name)
    criterion = entry.factory()
    monkeypatch.setattr(type(criterion), "__call__", _raise)
    model = Everything()
    before = state(model)
    with pytest.raises(tp.PruningError, match=rf"importance {type(criterion).__name__} \(plugin '{entry.plugin}'\) failed.*Boom"):
        tp.pruner.MetaPruner(model, inputs(), criterion, pruning_ratio=0.5, ignored_layers=[model.head]).step()
    assert_same(before, state(model))


def test_two_graphs_on_one_model_stay_consistent() -> None:
    model = Everything()
    first = tp.DependencyGraph().build_dependency(model, inputs())
    second = tp.DependencyGraph().build_dependency(model, inputs())
    first.get_pruning_group(model.head, tp.prune_linear_in_channels, [0, 1]).prune()  # the LSTM's hidden units
    before = state(model)
    with pytest.raises(tp.PruningError, match="changed outside this graph. Call build_dependency again"):
        second.get_pruning_group(model.head, tp.prune_linear_in_channels, [2]).prune()
    assert_same(before, state(model))


def test_a_model_pruned_by_two_meta_pruners_replays_from_its_plan() -> None:
    torch.manual_seed(0)
    model = Everything()
    widths = []
    for _ in range(2):  # the second pruner traces the model the first one left
        tp.pruner.MetaPruner(model, inputs(), tp.importance.MagnitudeImportance(), pruning_ratio=0.25,
                             ignored_layers=[model.head]).step()
        widths.append((model.emb.embedding_dim, model.rnn.hidden_size))
    assert widths[1][0] < widths[0][0] < 16 and widths[1][1] < widths[0][1] < 12
    fresh = Everything()
    tp.load_state_dict(fresh, state_dict=tp.state_dict(model))
    with torch.no_grad():
        assert torch.equal(fresh(*inputs()), model(*inputs()))
