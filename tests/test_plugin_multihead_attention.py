"""The multihead_attention plugin: embed_dim pruning of nn.MultiheadAttention, alone and through the graph."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import pruneframe as tp
from pruneframe.graph import function_name
from pruneframe.testing import check_prune_equivalence, prune_random

torch.manual_seed(0)


def _kept(t: torch.Tensor, dim: int, removed: list[int]) -> torch.Tensor:
    keep = [i for i in range(t.shape[dim]) if i not in removed]
    return t.index_select(dim, torch.tensor(keep))


def _qkv_kept(t: torch.Tensor, e: int, removed: list[int]) -> torch.Tensor:
    """Rows of a stacked (q; k; v) tensor that survive removing ``removed`` from each block."""
    return torch.cat([_kept(block, 0, removed) for block in t.split(e, 0)])


def _state(layer: nn.Module) -> dict:
    """Everything a failed prune must leave as it was: tensors and size attributes."""
    tensors = {k: v.detach().clone() for k, v in layer.state_dict().items()}
    attrs = {k: getattr(layer, k) for k in ("embed_dim", "kdim", "vdim", "num_heads", "head_dim")}
    return {"tensors": tensors, "attrs": attrs, "out_proj": (layer.out_proj.in_features, layer.out_proj.out_features)}


def _same_state(a: dict, b: dict) -> bool:
    return (a["attrs"] == b["attrs"] and a["out_proj"] == b["out_proj"] and a["tensors"].keys() == b["tensors"].keys()
            and all(torch.equal(a["tensors"][k], b["tensors"][k]) for k in a["tensors"]))


# --- direct (functional) pruning -----------------------------------------------------------------

@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("bias, add_bias_kv", [(True, True), (True, False), (False, False)])
def test_prune_same_count_per_head_shrinks_head_dim(batch_first: bool, bias: bool, add_bias_kv: bool) -> None:
    layer = nn.MultiheadAttention(32, 4, bias=bias, add_bias_kv=add_bias_kv, batch_first=batch_first)
    before = copy.deepcopy(layer)
    removed = [1, 12, 19, 30]  # one position from each head of 8
    in_proj_id, out_w_id = id(layer.in_proj_weight), id(layer.out_proj.weight)

    tp.prune_multihead_attention_out_channels(layer, removed)

    assert (layer.embed_dim, layer.kdim, layer.vdim, layer.num_heads, layer.head_dim) == (28, 28, 28, 4, 7)
    assert (layer.out_proj.in_features, layer.out_proj.out_features) == (28, 28)
    assert torch.equal(layer.in_proj_weight, _kept(_qkv_kept(before.in_proj_weight, 32, removed), 1, removed))
    assert torch.equal(layer.out_proj.weight, _kept(_kept(before.out_proj.weight, 0, removed), 1, removed))
    if bias:
        assert torch.equal(layer.in_proj_bias, _qkv_kept(before.in_proj_bias, 32, removed))
        assert torch.equal(layer.out_proj.bias, _kept(before.out_proj.bias, 0, removed))
    else:
        assert layer.in_proj_bias is None and layer.out_proj.bias is None
    if add_bias_kv:
        assert layer.bias_k.shape == layer.bias_v.shape == (1, 1, 28)
        assert torch.equal(layer.bias_k, _kept(before.bias_k, 2, removed))
        assert torch.equal(layer.bias_v, _kept(before.bias_v, 2, removed))
    assert id(layer.in_proj_weight) == in_proj_id and id(layer.out_proj.weight) == out_w_id  # Parameters survive

    x = torch.randn(2, 5, 28) if batch_first else torch.randn(5, 2, 28)
    out, weights = layer(x, x, x, need_weights=True)
    assert out.shape == x.shape
    extra = 1 if add_bias_kv else 0  # bias_k / bias_v append one key position
    assert weights.shape == (2, 5, 5 + extra)
    out, weights = layer(x, x, x, need_weights=False)
    assert out.shape == x.shape and weights is None
    unbatched = torch.randn(5, 28)
    assert layer(unbatched, unbatched, unbatched)[0].shape == (5, 28)


def test_prune_whole_heads_removes_heads_and_keeps_head_dim() -> None:
    layer = nn.MultiheadAttention(32, 4, batch_first=True)
    before = copy.deepcopy(layer)
    removed = list(range(8, 16)) + list(range(24, 32))  # heads 1 and 3

    tp.prune_multihead_attention_in_channels(layer, removed)  # the same function as the out one

    assert (layer.embed_dim, layer.num_heads, layer.head_dim) == (16, 2, 8)
    assert torch.equal(layer.in_proj_weight, _kept(_qkv_kept(before.in_proj_weight, 32, removed), 1, removed))
    # What is left is exactly heads 0 and 2 of the original, so the layer computes what they computed.
    x = torch.randn(2, 5, 32)
    kept = [i for i in range(32) if i not in removed]
    reference = copy.deepcopy(before)
    with torch.no_grad():
        reference.out_proj.weight[:, removed] = 0  # heads 1 and 3 no longer reach the output
        reference.in_proj_weight[:, removed] = 0  # nor do the removed input channels reach q, k, v
        expected = reference(x, x, x, need_weights=False)[0][..., kept]
        got = layer(x[..., kept], x[..., kept], x[..., kept], need_weights=False)[0]
    assert torch.allclose(got, expected, atol=1e-6)


def test_prune_with_separate_key_and_value_widths() -> None:
    layer = nn.MultiheadAttention(32, 4, kdim=10, vdim=32)  # separate q/k/v projections
    before = copy.deepcopy(layer)
    removed = [0, 9, 18, 27]

    tp.prune_multihead_attention_out_channels(layer, removed)

    assert (layer.embed_dim, layer.kdim, layer.vdim, layer.head_dim) == (28, 10, 28, 7)
    assert torch.equal(layer.q_proj_weight, _kept(_kept(before.q_proj_weight, 0, removed), 1, removed))
    assert torch.equal(layer.k_proj_weight, _kept(before.k_proj_weight, 0, removed))  # its 10 key inputs stay
    assert torch.equal(layer.v_proj_weight, _kept(_kept(before.v_proj_weight, 0, removed), 1, removed))
    assert torch.equal(layer.in_proj_bias, _qkv_kept(before.in_proj_bias, 32, removed))
    q, k, v = torch.randn(5, 2, 28), torch.randn(7, 2, 10), torch.randn(7, 2, 28)
    assert layer(q, k, v)[0].shape == (5, 2, 28)


def test_key_width_stays_independent_when_embed_dim_reaches_it() -> None:
    layer = nn.MultiheadAttention(32, 4, kdim=24, vdim=24)
    tp.prune_multihead_attention_out_channels(layer, list(range(0, 32, 4)))  # 8 removed: embed_dim 24 == kdim
    assert (layer.embed_dim, layer.kdim, layer.k_proj_weight.shape) == (24, 24, (24, 24))
    tp.prune_multihead_attention_out_channels(layer, [0, 6, 12, 18])
    # The key input still has its own 24 channels: only projection rows went, no key columns.
    assert (layer.embed_dim, layer.kdim, layer.vdim) == (20, 24, 24)
    assert layer.k_proj_weight.shape == layer.v_proj_weight.shape == (20, 24)
    q, kv = torch.randn(5, 2, 20), torch.randn(7, 2, 24)
    assert layer(q, kv, kv)[0].shape == (5, 2, 20)


@pytest.mark.parametrize(
    "idxs, error, message",
    [
        ([0, 1, 2], ValueError, "embed_dim=29, not divisible by num_heads=4"),
        ([0, 1, 2, 3], ValueError, r"takes \[4, 0, 0, 0\] channels from the 4 heads"),
        (list(range(32)), ValueError, "would leave it empty"),
        ([0, 32], IndexError, r"\[32\] are out of range"),
        ([5, 5, 13, 21], ValueError, r"\[5\] are given more than once"),
    ],
)
def test_bad_indices_are_refused_and_leave_the_layer_unchanged(idxs: list[int], error: type, message: str) -> None:
    layer = nn.MultiheadAttention(32, 4, add_bias_kv=True)
    before = _state(layer)
    with pytest.raises(error, match=message):
        tp.prune_multihead_attention_out_channels(layer, idxs)
    assert _same_state(_state(layer), before)
    x = torch.randn(3, 2, 32)
    assert layer(x, x, x)[0].shape == (3, 2, 32)


def test_error_names_the_way_out() -> None:
    layer = nn.MultiheadAttention(32, 4)
    with pytest.raises(ValueError) as info:
        tp.prune_multihead_attention_out_channels(layer, [0, 1, 2])
    assert "remove a multiple of 4 channels" in str(info.value) and "whole heads (8 channels each)" in str(info.value)


def test_mask_in_channels_makes_the_output_ignore_those_inputs() -> None:
    layer = nn.MultiheadAttention(16, 2, batch_first=True).eval()
    tp.get_registry().layer_pruner(nn.MultiheadAttention).mask_in_channels(layer, [3, 7])
    x = torch.randn(2, 4, 16)
    y = x.clone()
    y[..., [3, 7]] = torch.randn(2, 4, 2)
    with torch.no_grad():
        assert torch.allclose(layer(x, x, x)[0], layer(y, y, y)[0], atol=1e-6)


# --- through the dependency graph -------------------------------------------------------------------

class AttentionBlock(nn.Module):
    """Linear -> self-attention with a residual add -> Linear."""

    def __init__(self, batch_first: bool = True, heads: int = 4):
        super().__init__()
        self.fc1 = nn.Linear(16, 32)
        self.mha = nn.MultiheadAttention(32, heads, batch_first=batch_first)
        self.fc2 = nn.Linear(32, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        a, _ = self.mha(h, h, h)
        return self.fc2(a + h)


@pytest.mark.parametrize("batch_first", [True, False])
def test_graph_group_from_the_first_linear_prunes_attention_and_consumer(batch_first: bool) -> None:
    model = AttentionBlock(batch_first=batch_first).eval()
    x = torch.randn(2, 5, 16) if batch_first else torch.randn(5, 2, 16)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=x)
    idxs = [2, 10, 18, 26]  # one position of every head

    group = graph.get_pruning_group(model.fc1, tp.prune_linear_out_channels, idxs=idxs)

    layers = {dep.target.module: (function_name(dep.handler), sorted(ix)) for dep, ix in group}
    assert layers[model.mha] == ("prune_out_channels", idxs)
    assert layers[model.fc2] == ("prune_in_channels", idxs)
    assert graph.check_pruning_group(group)
    group.prune()
    assert model.fc1.out_features == 28 and model.mha.embed_dim == 28 and model.fc2.in_features == 28
    assert model.mha.head_dim == 7 and model.mha.num_heads == 4
    with torch.no_grad():
        assert model(x).shape == (x.shape[0], x.shape[1], 8)


def untied_graph(model: nn.Module, x: torch.Tensor) -> tp.DependencyGraph:
    """A graph whose attention layers tie only input i to output i, so groups may remove whole heads."""
    from pruneframe.plugins.multihead_attention import MultiheadAttentionPruner

    graph = tp.DependencyGraph()
    graph.register_customized_layer(nn.MultiheadAttention, MultiheadAttentionPruner(tie_head_positions=False))
    return graph.build_dependency(model, example_inputs=x)


def test_graph_unequal_heads_are_refused_and_the_model_is_restored() -> None:
    model = AttentionBlock()
    x = torch.randn(2, 5, 16)
    graph = untied_graph(model, x)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    group = graph.get_pruning_group(model.fc1, tp.prune_linear_out_channels, idxs=[0, 1, 2, 3])  # all from head 0
    assert not graph.check_pruning_group(group)
    with pytest.raises(tp.PruningError, match="heads must stay equally wide"):
        group.prune()
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.fc1.out_features == 32 and model.mha.embed_dim == 32


def test_whole_head_prune_is_exactly_the_masked_original() -> None:
    from pruneframe.plugins.multihead_attention import MultiheadAttentionPruner

    def remove_head_1(graph: tp.DependencyGraph, model: nn.Module) -> None:
        graph.get_pruning_group(model.fc1, tp.prune_linear_out_channels, idxs=list(range(8, 16))).prune()

    untied = {nn.MultiheadAttention: MultiheadAttentionPruner(tie_head_positions=False)}
    error, pruned, graph = check_prune_equivalence(AttentionBlock(), torch.randn(2, 5, 16), remove_head_1,
                                                   customized_pruners=untied)
    assert graph.pruning_history(), "the group was not pruned"
    assert error < 1e-9
    assert (pruned.mha.num_heads, pruned.mha.head_dim, pruned.mha.embed_dim) == (3, 8, 24)


def test_head_dim_prune_is_not_claimed_exact() -> None:
    def one_per_head(graph: tp.DependencyGraph, model: nn.Module) -> None:
        graph.get_pruning_group(model.fc1, tp.prune_linear_out_channels, idxs=[0, 8, 16, 24]).prune()

    with pytest.raises(NotImplementedError, match="1/sqrt\\(head_dim\\)"):
        check_prune_equivalence(AttentionBlock(), torch.randn(2, 5, 16), one_per_head)


class CrossAttention(nn.Module):
    """Queries from one branch, keys and values of another width from another, with a float mask."""

    def __init__(self):
        super().__init__()
        self.q = nn.Linear(6, 16)
        self.kv = nn.Linear(6, 12)
        self.mha = nn.MultiheadAttention(16, 2, kdim=12, vdim=12, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = self.kv(memory)
        a, _ = self.mha(self.q(x), m, m, attn_mask=mask)
        return self.head(a)


def test_graph_cross_attention_blocks_the_key_branch_and_prunes_the_query_branch() -> None:
    model = CrossAttention().eval()
    inputs = (torch.randn(2, 4, 6), torch.randn(2, 7, 6), torch.zeros(4, 7))
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=inputs)

    kv_group = graph.get_pruning_group(model.kv, tp.prune_linear_out_channels, idxs=[0, 1])
    assert not graph.check_pruning_group(kv_group)
    assert any("expects no channels" in r for r in kv_group.blocked_reasons)

    q_group = graph.get_pruning_group(model.q, tp.prune_linear_out_channels, idxs=[0, 8])  # position 0 of both heads
    assert {dep.target.module for dep, _ in q_group} == {model.q, model.mha, model.head}
    q_group.prune()
    assert (model.mha.embed_dim, model.mha.kdim, model.mha.vdim, model.mha.head_dim) == (14, 12, 12, 7)
    with torch.no_grad():
        assert model(*inputs).shape == (2, 4, 3)


def test_tied_head_positions_make_every_graph_group_acceptable() -> None:
    from pruneframe.plugins.multihead_attention import MultiheadAttentionPruner

    model = AttentionBlock().eval()
    x = torch.randn(2, 5, 16)
    graph = tp.DependencyGraph()
    graph.register_customized_layer(nn.MultiheadAttention, MultiheadAttentionPruner(tie_head_positions=True))
    graph.build_dependency(model, example_inputs=x)

    group = graph.get_pruning_group(model.fc1, tp.prune_linear_out_channels, idxs=[3])
    assert group[0].idxs == [3, 11, 19, 27]  # position 3 of every head goes with it
    fc1_group = next(g for g in graph.get_all_groups() if g[0].dep.target.module is model.fc1)
    assert sorted(map(sorted, fc1_group.root_blocks())) == [[j, j + 8, j + 16, j + 24] for j in range(8)]

    # Head-blind random pruning of the residual stream now always yields a valid attention layer.
    assert prune_random(0.3, seed=0)(graph, model) >= 1
    assert model.mha.embed_dim < 32 and model.mha.embed_dim == model.mha.num_heads * model.mha.head_dim
    assert model.mha.num_heads == 4 and model.fc1.out_features == model.fc2.in_features == model.mha.embed_dim
    with torch.no_grad():
        assert model(x).shape == (2, 5, 8)


def test_untied_heads_refuse_head_blind_groups_before_touching_anything() -> None:
    """Without tied positions, a random 30% of the stream is no valid head split: check_pruning_group says so."""
    model = AttentionBlock()
    graph = untied_graph(model, torch.randn(2, 5, 16))
    group = graph.get_pruning_group(model.fc1, tp.prune_linear_out_channels, idxs=list(range(9)))
    assert any("not divisible by num_heads=4" in p for p in group.problems())
    with pytest.raises(tp.PruningError, match="not divisible by num_heads=4"):
        group.prune()
    assert model.fc1.out_features == 32 and model.mha.embed_dim == 32
