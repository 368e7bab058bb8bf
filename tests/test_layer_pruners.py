"""Unit tests of the built-in layer pruners: out- and in-channel pruning keep exactly the right slices."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import pruneframe as tp

torch.manual_seed(0)


def _kept(t: torch.Tensor, dim: int, removed: list[int]) -> torch.Tensor:
    keep = [i for i in range(t.shape[dim]) if i not in removed]
    return t.index_select(dim, torch.tensor(keep))


@pytest.mark.parametrize("cls, dims", [(nn.Conv1d, 1), (nn.Conv2d, 2), (nn.Conv3d, 3)])
def test_conv_out_and_in(cls, dims) -> None:
    layer = cls(5, 7, 3, padding=1)
    w, b = layer.weight.detach().clone(), layer.bias.detach().clone()
    weight_id = id(layer.weight)
    tp.prune_conv_out_channels(layer, [0, 4])
    tp.prune_conv_in_channels(layer, [1])
    assert layer.out_channels == 5 and layer.in_channels == 4
    assert torch.equal(layer.weight, _kept(_kept(w, 0, [0, 4]), 1, [1]))
    assert torch.equal(layer.bias, _kept(b, 0, [0, 4]))
    assert id(layer.weight) == weight_id  # the Parameter object survives (optimizers keep pointing at it)
    x = torch.randn((2, 4) + (6,) * dims)
    assert layer(x).shape == (2, 5) + (6,) * dims


def test_conv_transposed_out_and_in() -> None:
    layer = nn.ConvTranspose2d(5, 7, 3)
    w = layer.weight.detach().clone()  # (in, out, k, k)
    tp.prune_conv_out_channels(layer, [6])
    tp.prune_conv_in_channels(layer, [0, 2])
    assert torch.equal(layer.weight, _kept(_kept(w, 1, [6]), 0, [0, 2]))
    assert layer(torch.randn(1, 3, 4, 4)).shape == (1, 6, 6, 6)


def test_depthwise_conv_removes_whole_groups() -> None:
    layer = nn.Conv2d(4, 8, 3, groups=4)  # two outputs per input channel
    w = layer.weight.detach().clone()
    tp.prune_depthwise_conv_out_channels(layer, [2, 3])
    assert (layer.in_channels, layer.out_channels, layer.groups) == (3, 6, 3)
    assert torch.equal(layer.weight, _kept(w, 0, [2, 3]))
    tp.prune_depthwise_conv_in_channels(layer, [0])
    assert (layer.in_channels, layer.out_channels, layer.groups) == (2, 4, 2)
    assert layer(torch.randn(1, 2, 5, 5)).shape == (1, 4, 3, 3)
    with pytest.raises(ValueError, match="same output positions"):  # one output of one group only
        tp.prune_conv_out_channels(layer, [0])
    tp.prune_conv_out_channels(layer, [0, 2])  # output 0 of every group: the groups stay, each gets narrower
    assert (layer.in_channels, layer.out_channels, layer.groups) == (2, 2, 2)
    assert layer(torch.randn(1, 2, 5, 5)).shape == (1, 2, 3, 3)


def test_grouped_conv_needs_the_same_positions_in_every_group() -> None:
    layer = nn.Conv2d(8, 12, 1, groups=4)  # 2 inputs and 3 outputs per group
    w = layer.weight.detach().clone()
    tp.prune_conv_out_channels(layer, [1, 4, 7, 10])
    with pytest.raises(ValueError, match="same"):
        tp.prune_conv_out_channels(layer, [0])
    assert layer.out_channels == 8
    tp.prune_conv_in_channels(layer, [0, 2, 4, 6])
    assert (layer.in_channels, layer.out_channels, layer.groups) == (4, 8, 4)
    assert torch.equal(layer.weight, _kept(_kept(w, 0, [1, 4, 7, 10]), 1, [0]))
    assert layer(torch.randn(1, 4, 2, 2)).shape == (1, 8, 2, 2)


def test_linear_out_and_in() -> None:
    layer = nn.Linear(6, 5)
    w, b = layer.weight.detach().clone(), layer.bias.detach().clone()
    tp.prune_linear_out_channels(layer, [4])
    tp.prune_linear_in_channels(layer, [0, 5])
    assert (layer.in_features, layer.out_features) == (4, 4)
    assert torch.equal(layer.weight, _kept(_kept(w, 0, [4]), 1, [0, 5]))
    assert torch.equal(layer.bias, _kept(b, 0, [4]))
    assert layer(torch.randn(3, 2, 4)).shape == (3, 2, 4)


@pytest.mark.parametrize("cls, shape", [(nn.BatchNorm1d, (4, 6)), (nn.BatchNorm2d, (2, 6, 3, 3)), (nn.BatchNorm3d, (2, 6, 2, 2, 2))])
def test_batchnorm_prunes_every_per_channel_tensor(cls, shape) -> None:
    layer = cls(6)
    with torch.no_grad():
        layer.running_mean.uniform_()
        layer.weight.uniform_()
    saved = {k: v.clone() for k, v in layer.state_dict().items()}
    tp.prune_batchnorm_out_channels(layer, [0, 3])
    assert layer.num_features == 4
    for name in ("weight", "bias", "running_mean", "running_var"):
        assert torch.equal(getattr(layer, name), _kept(saved[name], 0, [0, 3])), name
    tp.prune_batchnorm_in_channels(layer, [1])  # one space: the same as out
    assert layer.num_features == 3
    layer(torch.randn(shape[0], 3, *shape[2:]))


def test_layernorm_groupnorm_instancenorm_prelu() -> None:
    ln = nn.LayerNorm(6)
    tp.prune_layernorm_out_channels(ln, [2])
    assert ln.normalized_shape == (5,) and ln.weight.shape == (5,)
    assert ln(torch.randn(2, 3, 5)).shape == (2, 3, 5)

    gn = nn.GroupNorm(2, 6)
    tp.prune_groupnorm_out_channels(gn, [0, 3])
    assert gn.num_channels == 4 and gn.weight.shape == (4,)
    gn(torch.randn(1, 4, 2, 2))
    with pytest.raises(ValueError, match="multiple of 2"):
        tp.prune_groupnorm_out_channels(gn, [0])
    assert gn.num_channels == 4

    inorm = nn.InstanceNorm2d(5, affine=True, track_running_stats=True)
    tp.prune_instancenorm_out_channels(inorm, [4])
    assert inorm.num_features == 4 and inorm.running_mean.shape == (4,)
    inorm(torch.randn(2, 4, 3, 3))

    prelu = nn.PReLU(6)
    tp.prune_prelu_out_channels(prelu, [1, 2])
    assert prelu.num_parameters == 4 and prelu(torch.randn(1, 4, 2)).shape == (1, 4, 2)
    shared = nn.PReLU()
    tp.prune_prelu_out_channels(shared, [0])
    assert shared.weight.shape == (1,)


def test_embedding_prunes_the_embedding_dim() -> None:
    emb = nn.Embedding(10, 6)
    w = emb.weight.detach().clone()
    tp.prune_embedding_out_channels(emb, [5])
    assert emb.embedding_dim == 5 and torch.equal(emb.weight, w[:, :5])
    assert emb(torch.tensor([[1, 2]])).shape == (1, 2, 5)


def test_raw_parameter() -> None:
    p = nn.Parameter(torch.randn(1, 4, 6))
    ref = p.detach().clone()
    tp.prune_parameter_out_channels(p, [0, 5], dim=2)
    assert torch.equal(p, ref[:, :, 1:5])
    tp.prune_parameter_out_channels(p, [1])  # default: the last dimension
    assert p.shape == (1, 4, 3)


@pytest.mark.parametrize(
    "fn, make",
    [
        ("prune_conv_out_channels", lambda: nn.Conv2d(2, 3, 1)),
        ("prune_linear_in_channels", lambda: nn.Linear(3, 2)),
        ("prune_batchnorm_out_channels", lambda: nn.BatchNorm2d(3)),
        ("prune_layernorm_out_channels", lambda: nn.LayerNorm(3)),
    ],
)
def test_bad_indices_leave_the_layer_unchanged(fn, make) -> None:
    layer = make()
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    for bad in ([3], [-1], [0, 0]):
        with pytest.raises((IndexError, ValueError)):
            getattr(tp, fn)(layer, bad)
    after = layer.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_parameter_pruner_made_with_a_pruning_dim_prunes_along_it() -> None:
    p = nn.Parameter(torch.arange(24.0).reshape(2, 3, 4))
    tp.function.ParameterPruner(pruning_dim=1).prune_out_channels(p, [0])
    assert p.shape == (2, 2, 4) and torch.equal(p[0, 0], torch.tensor([4.0, 5.0, 6.0, 7.0]))
    tp.function.ParameterPruner(pruning_dim=1).prune_out_channels(p, [1], dim=2)  # a call's dim wins
    assert p.shape == (2, 2, 3)
