"""Exact index mapping through every kind of data-movement op, checked index by index."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pruneframe as tp
from pruneframe.testing import assert_prune_equivalent, prune_random


def mapping(model: nn.Module, x, layer: nn.Module, idxs: list[int], fn=None) -> dict[str, list[int]]:
    """Which indices of which layer a prune of ``layer``'s outputs ``idxs`` takes along."""
    DG = tp.DependencyGraph().build_dependency(model, x)
    group = DG.get_pruning_group(layer, fn or DG.get_pruner_of_module(layer).prune_out_channels, idxs)
    assert DG.check_pruning_group(group), group.problems()
    return {f"{dep.target.name}.{'in' if 'in_channels' in tp.graph.function_name(dep.handler) else 'out'}": idxs
            for dep, idxs in group}


class Seq(nn.Module):
    def __init__(self, body, **layers):
        super().__init__()
        for k, v in layers.items():
            setattr(self, k, v)
        self.body = body

    def forward(self, x):
        return self.body(self, x)


def test_cat_on_the_last_dim() -> None:
    m = Seq(lambda s, x: s.c(torch.cat([s.a(x), s.b(x)], dim=-1)), a=nn.Linear(3, 4), b=nn.Linear(3, 6), c=nn.Linear(10, 2))
    assert mapping(m, torch.randn(2, 5, 3), m.b, [1, 4]) == {"b.out": [1, 4], "c.in": [5, 8]}


def test_cat_of_a_tensor_with_itself() -> None:
    m = Seq(lambda s, x: s.c(torch.cat([s.a(x), s.a(x)], 1)), a=nn.Conv2d(3, 4, 1), c=nn.Conv2d(8, 2, 1))
    assert mapping(m, torch.randn(1, 3, 4, 4), m.a, [1]) == {"a.out": [1], "c.in": [1, 5]}
    y_twice = Seq(lambda s, x: s.c(torch.cat([s.a(x)] * 2, 1)), a=nn.Conv2d(3, 4, 1), c=nn.Conv2d(8, 2, 1))
    assert mapping(y_twice, torch.randn(1, 3, 4, 4), y_twice.c, [6], tp.prune_conv_in_channels) == {"a.out": [2], "c.in": [2, 6]}


def test_chunk_keeps_its_pieces_equal() -> None:
    def body(s, x):
        a, b = s.p(x).chunk(2, dim=1)
        return s.qa(a) + s.qb(b)

    m = Seq(body, p=nn.Conv2d(3, 8, 1), qa=nn.Conv2d(4, 2, 1), qb=nn.Conv2d(4, 2, 1))
    assert mapping(m, torch.randn(1, 3, 4, 4), m.p, [5]) == {"p.out": [1, 5], "qa.in": [1], "qb.in": [1]}


def test_unequal_split_and_unbind_pin_the_channels() -> None:
    def split(s, x):
        a, b = torch.split(s.p(x), [3, 5], dim=1)
        return s.qa(a).sum() + s.qb(b).sum()

    m = Seq(split, p=nn.Conv2d(3, 8, 1), qa=nn.Conv2d(3, 2, 1), qb=nn.Conv2d(5, 2, 1))
    DG = tp.DependencyGraph().build_dependency(m, torch.randn(1, 3, 4, 4))
    group = DG.get_pruning_group(m.p, tp.prune_conv_out_channels, [0])
    assert len(group[0].idxs) == 8 and not DG.check_pruning_group(group)  # all or nothing

    def unbind(s, x):
        return sum(t.sum() for t in s.p(x).unbind(1))

    m = Seq(unbind, p=nn.Conv2d(3, 4, 1))
    DG = tp.DependencyGraph().build_dependency(m, torch.randn(1, 3, 4, 4))
    assert not DG.check_pruning_group(DG.get_pruning_group(m.p, tp.prune_conv_out_channels, [0]))


def test_slicing_tokens_passes_channels_through_and_slicing_channels_pins_them() -> None:
    m = Seq(lambda s, x: s.b(s.a(x)[:, 1::2]), a=nn.Linear(3, 6), b=nn.Linear(6, 2))
    assert mapping(m, torch.randn(2, 5, 3), m.a, [0, 5]) == {"a.out": [0, 5], "b.in": [0, 5]}
    m = Seq(lambda s, x: s.b(s.a(x)[..., ::2]), a=nn.Linear(3, 6), b=nn.Linear(3, 2))
    DG = tp.DependencyGraph().build_dependency(m, torch.randn(2, 5, 3))
    assert not DG.check_pruning_group(DG.get_pruning_group(m.a, tp.prune_linear_out_channels, [1]))


def test_flatten_maps_a_channel_to_its_features() -> None:
    m = Seq(lambda s, x: s.fc(s.conv(x).flatten(1)), conv=nn.Conv2d(3, 3, 1), fc=nn.Linear(12, 2))
    assert mapping(m, torch.randn(1, 3, 2, 2), m.conv, [1]) == {"conv.out": [1], "fc.in": [4, 5, 6, 7]}
    m = Seq(lambda s, x: s.fc(s.conv(x).flatten(1)), conv=nn.Conv2d(3, 3, 1), fc=nn.Linear(12, 2))
    assert mapping(m, torch.randn(1, 3, 2, 2), m.fc, [6], tp.prune_linear_in_channels) == {"conv.out": [1], "fc.in": [4, 5, 6, 7]}


def test_channel_shuffle_with_view_and_transpose() -> None:
    def body(s, x):
        y = s.a(x)
        n, c, h, w = y.shape
        y = y.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        return s.b(y)

    m = Seq(body, a=nn.Conv2d(3, 6, 1), b=nn.Conv2d(6, 2, 1))
    # channel j of the first half lands at 2j, of the second half at 2j+1; the groups (2) cannot change
    assert mapping(m, torch.randn(1, 3, 4, 4), m.a, [1]) == {"a.out": [1, 4], "b.in": [2, 3]}


@pytest.mark.parametrize("free", ["heads", "width"])
def test_grouped_query_attention_repeat(free: str) -> None:
    """2 key/value heads serve 4 query heads (head dim 4), repeated as Hugging Face's repeat_kv does.

    ``free`` says which size the model code leaves open with -1: the head count or the head width.
    """

    class GQA(nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.k, self.v, self.o = nn.Linear(8, 16), nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(16, 8)

        def split(self, t, heads):
            b, s, _ = t.shape
            return (t.view(b, s, -1, 4) if free == "heads" else t.view(b, s, heads, -1)).transpose(1, 2)

        def forward(self, x):
            b, s, _ = x.shape
            q, k, v = self.split(self.q(x), 4), self.split(self.k(x), 2), self.split(self.v(x), 2)
            hk, d = k.shape[1], k.shape[-1]
            k = k[:, :, None].expand(b, hk, 2, s, d).reshape(b, hk * 2, s, d)
            v = v.repeat_interleave(2, dim=1)
            att = torch.softmax(q @ k.transpose(-1, -2), dim=-1)
            return x + self.o((att @ v).transpose(1, 2).reshape(b, s, -1))

    m, x = GQA(), torch.randn(1, 3, 8)
    if free == "heads":
        # a head's width is fixed: whole heads go. Key/value head 0 takes its query heads 0 and 1 along, and
        # since the scores' head h meets value head h in att @ v, value head 0 goes too (with o's inputs)
        kv0 = {"k.out": [0, 1, 2, 3], "q.out": list(range(8)), "v.out": [0, 1, 2, 3], "o.in": list(range(8))}
        assert mapping(m, x, m.k, [1]) == kv0
        assert mapping(m, x, m.v, [1]) == kv0
        assert mapping(m, x, m.q, [12]) == {"k.out": [4, 5, 6, 7], "q.out": list(range(8, 16)),
                                            "v.out": [4, 5, 6, 7], "o.in": list(range(8, 16))}
    else:
        # the head count is fixed: position 1 goes from every head of q and k (of v and o)
        assert mapping(m, x, m.k, [1]) == {"k.out": [1, 5], "q.out": [1, 5, 9, 13]}
        assert mapping(m, x, m.v, [1]) == {"v.out": [1, 5], "o.in": [1, 5, 9, 13]}
    assert_prune_equivalent(GQA(), torch.randn(2, 3, 8), prune_random(ratio=0.5, seed=0))


class SDPAttention(nn.Module):
    """Hugging Face style attention: heads read with -1, key/value heads repeated, F.scaled_dot_product_attention."""

    def __init__(self, kv_heads: int = 2, mode: str = "repeat"):
        super().__init__()
        self.kv_heads, self.mode = kv_heads, mode
        self.q, self.k, self.v = nn.Linear(8, 16), nn.Linear(8, 4 * kv_heads), nn.Linear(8, 4 * kv_heads)
        self.o = nn.Linear(16, 8)

    def forward(self, x):
        b, s, _ = x.shape
        q, k, v = (t.view(b, s, -1, 4).transpose(1, 2) for t in (self.q(x), self.k(x), self.v(x)))
        if self.mode == "repeat":
            n_rep = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(n_rep, dim=1), v.repeat_interleave(n_rep, dim=1)
            y = F.scaled_dot_product_attention(q, k, v)
        elif self.mode == "sdpa-gqa":
            y = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
        else:  # "matmul": key/value broadcast over the query heads (multi-query attention)
            y = torch.softmax(q @ k.transpose(-1, -2), dim=-1) @ v
        return x + self.o(y.transpose(1, 2).reshape(b, s, -1))


@pytest.mark.parametrize("mode", ["repeat", "sdpa-gqa"])
def test_attention_heads_of_q_k_and_v_go_together(mode: str) -> None:
    """Head h of the scores meets head h of v: dropping a query/key head without its value head would break."""
    m, x = SDPAttention(2, mode), torch.randn(1, 3, 8)
    second_kv_group = {"q.out": list(range(8, 16)), "k.out": [4, 5, 6, 7], "v.out": [4, 5, 6, 7], "o.in": list(range(8, 16))}
    assert mapping(m, x, m.q, [9]) == second_kv_group
    assert mapping(m, x, m.v, [5]) == second_kv_group
    assert_prune_equivalent(SDPAttention(2, mode), torch.randn(2, 3, 8), prune_random(ratio=0.5, seed=0))


def test_a_single_key_value_head_of_fixed_width_cannot_shrink() -> None:
    """Multi-query attention, one key/value head broadcast over the query heads by the product itself.

    The code fixes a head's width (view(b, s, -1, 4)) and k and v have one head each, so no position of
    k or v may go, and query position j meets key position j in every head: nothing here can be pruned.
    (The -1 of k's and v's views counts a single head; it still says the width is fixed.)
    """
    m, x = SDPAttention(1, "matmul"), torch.randn(1, 3, 8)
    DG = tp.DependencyGraph().build_dependency(m, x)
    for layer in (m.q, m.k, m.v):
        group = DG.get_pruning_group(layer, tp.prune_linear_out_channels, [1])
        assert not DG.check_pruning_group(group)
        assert any("would remove all" in problem for problem in group.problems())
        with pytest.raises(tp.PruningError):
            group.prune()
    assert m(x).shape == (1, 3, 8) and m.v.out_features == 4


def test_pixel_shuffle_and_unshuffle() -> None:
    m = Seq(lambda s, x: s.b(F.pixel_shuffle(s.a(x), 2)), a=nn.Conv2d(3, 8, 1), b=nn.Conv2d(2, 2, 1))
    assert mapping(m, torch.randn(1, 3, 4, 4), m.b, [1], tp.prune_conv_in_channels) == {"a.out": [4, 5, 6, 7], "b.in": [1]}
    m = Seq(lambda s, x: s.b(F.pixel_unshuffle(s.a(x), 2)), a=nn.Conv2d(3, 2, 1), b=nn.Conv2d(8, 2, 1))
    assert mapping(m, torch.randn(1, 3, 4, 4), m.a, [1]) == {"a.out": [1], "b.in": [4, 5, 6, 7]}


def test_pooling_and_interpolation_pass_channels_through() -> None:
    def body(s, x):
        y = F.max_pool2d(s.a(x), 2)
        y = F.interpolate(y, scale_factor=2.0, mode="bilinear") + F.avg_pool2d(s.a(x), 1)
        return s.b(F.adaptive_avg_pool2d(y, 1))

    m = Seq(body, a=nn.Conv2d(3, 5, 1), b=nn.Conv2d(5, 2, 1))
    assert mapping(m, torch.randn(1, 3, 4, 4), m.a, [0, 3]) == {"a.out": [0, 3], "b.in": [0, 3]}


def test_reduction_over_channels_is_a_sink() -> None:
    """x / ||x|| over channels: the norm belongs to no channel, so it couples nothing."""
    m = Seq(lambda s, x: s.b(s.a(x) / s.a(x).pow(2).sum(1, keepdim=True).sqrt()), a=nn.Conv2d(3, 5, 1), b=nn.Conv2d(5, 2, 1))
    assert mapping(m, torch.randn(1, 3, 4, 4), m.a, [2]) == {"a.out": [2], "b.in": [2]}
