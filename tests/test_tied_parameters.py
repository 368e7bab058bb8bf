"""A parameter shared by several layers (tied weights) is one thing: coupled, pruned once, still shared afterwards."""
from __future__ import annotations

import copy
import functools
import io

import pytest
import torch
from torch import nn

import pruneframe as tp
from pruneframe.graph import Transaction
from pruneframe.testing import check_prune_equivalence, prune_random


class TiedLM(nn.Module):
    """A tiny language model whose output projection is its input embedding, as GPT-2's and Gemma's are."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 16)
        self.mid = nn.Linear(16, 16)
        self.head = nn.Linear(16, 20, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.emb(ids)
        return self.head(torch.relu(self.mid(h)) + h)


IDS = torch.randint(0, 20, (2, 5), generator=torch.Generator().manual_seed(0))


def test_a_tied_embedding_is_pruned_once_and_stays_tied() -> None:
    torch.manual_seed(0)
    model = TiedLM()
    DG = tp.DependencyGraph().build_dependency(model, IDS)
    group = DG.get_pruning_group(model.emb, tp.prune_embedding_out_channels, [1, 4, 7])
    assert {(dep.target.name, dep.kind) for dep, _ in group} >= {("emb", "out"), ("head", "in")}
    group.prune()
    assert model.head.weight is model.emb.weight and model.emb.weight.shape == (20, 13)
    assert (model.emb.embedding_dim, model.head.in_features) == (13, 13)
    assert model(IDS).shape == (2, 5, 20)


def test_a_tied_prune_equals_the_masked_original() -> None:
    error, pruned, graph = check_prune_equivalence(TiedLM(), IDS, prune_random(0.4, seed=3))
    assert error < 1e-9
    assert pruned.head.weight is pruned.emb.weight and pruned.emb.embedding_dim < 16


def test_meta_pruner_prunes_a_tied_model_with_nothing_ignored_and_the_plan_keeps_the_tie() -> None:
    torch.manual_seed(0)
    model = TiedLM()
    tp.pruner.MetaPruner(model, IDS, tp.importance.MagnitudeImportance(), pruning_ratio=0.5).step()
    assert model.head.weight is model.emb.weight and model.emb.embedding_dim == 8
    buffer = io.BytesIO()
    torch.save(tp.state_dict(model), buffer)
    buffer.seek(0)
    fresh = TiedLM()
    tp.load_state_dict(fresh, state_dict=torch.load(buffer, weights_only=True))
    assert fresh.head.weight is fresh.emb.weight
    with torch.no_grad():
        assert torch.equal(fresh(IDS), model(IDS))


def test_the_vocabulary_of_a_tied_head_is_never_pruned() -> None:
    """The embedding has no channels along the vocabulary, so the head's outputs (its rows) cannot shrink."""
    model = TiedLM()
    DG = tp.DependencyGraph().build_dependency(model, IDS, output_transform=lambda out: ())
    group = DG.get_pruning_group(model.head, tp.prune_linear_out_channels, [0])
    assert any("shared by" in reason and "head.weight" in reason for reason in group.blocked_reasons)


class Scale(nn.Module):
    def __init__(self, weight: nn.Parameter) -> None:
        super().__init__()
        self.weight = weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight


class ScalePruner(tp.pruner.BasePruningFunc):
    """A user's pruner with code only: it does not say which dimension of its weight holds its channels."""

    def prune_out_channels(self, layer, idxs):
        keep = [i for i in range(layer.weight.shape[0]) if i not in set(idxs)]
        layer.weight = nn.Parameter(layer.weight.data[keep])
        return layer

    prune_in_channels = prune_out_channels


def test_a_shared_parameter_whose_holder_does_not_say_its_dims_keeps_its_channels() -> None:
    fc = nn.Linear(4, 6)
    model = nn.Sequential(nn.Linear(3, 4), fc, Scale(fc.bias), nn.Linear(6, 2))
    DG = tp.DependencyGraph()
    DG.register_customized_layer(Scale, ScalePruner())
    DG.build_dependency(model, torch.randn(2, 3))
    group = DG.get_pruning_group(model[1], tp.prune_linear_out_channels, [0])
    assert any("does not say which dimension" in reason for reason in group.blocked_reasons)
    assert not DG.check_pruning_group(group)


def test_a_shared_tensor_pruned_differently_by_its_holders_is_refused_and_restored() -> None:
    a, b = nn.Linear(4, 6), nn.Linear(4, 6)
    b.weight = a.weight
    before = a.weight.detach().clone()
    transaction = Transaction([a, b])
    transaction.run("pruning a", functools.partial(tp.prune_linear_out_channels, a, [0]), a)
    with pytest.raises(tp.PruningError, match="shared with Linear, was pruned differently"):
        transaction.run("pruning b", functools.partial(tp.prune_linear_out_channels, b, [1]), b)
    assert a.weight is b.weight and torch.equal(a.weight.detach(), before) and a.out_features == b.out_features == 6


def test_a_pruner_that_replaces_a_tied_parameter_keeps_it_one_object() -> None:
    weight = nn.Parameter(torch.randn(5))
    first, second = Scale(weight), Scale(weight)
    transaction = Transaction([first, second])
    pruner = ScalePruner()
    transaction.run("first", functools.partial(pruner.prune_out_channels, first, [2]), first)
    transaction.run("second", functools.partial(pruner.prune_out_channels, second, [2]), second)
    assert first.weight is second.weight is weight and weight.shape == (4,)
    copy.deepcopy(first)  # an ordinary parameter afterwards
