"""Broadcast operands and per-slice reductions: tied to the channels they serve, not coupled to all of them.

A weight of one head's width multiplied into every head, a statistic of each
head (an RMS norm over the head's dims), a per-token gate or a scalar scale
must not tie every head (or every channel) to every other: a head goes with its
own channels, and the shared operand stays. Each prune is checked exactly
against the original with the removed channels zeroed (float64).
"""
from __future__ import annotations

import torch
from torch import nn

import pruneframe as tp
from pruneframe.testing import assert_prune_equivalent


class PerHeadNorm(nn.Module):
    """Qwen3's q/k norm: an RMS norm over each head's 4 dims with one weight for all heads."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(6, 16), nn.Linear(16, 3)
        self.weight = nn.Parameter(torch.rand(4) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x).view(*x.shape[:-1], -1, 4)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)
        return self.b((self.weight * h).flatten(-2))


class MeanOfHalves(nn.Module):
    """Channel j of the first half and of the second half are averaged into b's input j."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        return self.b(y.view(y.shape[0], 2, -1, *y.shape[2:]).mean(1))


class Gated(nn.Module):
    """A per-token gate (one value per token) and a scalar scale and shift, both broadcast over every channel."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.gate, self.b = nn.Linear(6, 8), nn.Linear(6, 1), nn.Linear(8, 3)
        self.scale, self.shift = nn.Parameter(torch.tensor([0.8])), nn.Parameter(torch.tensor([0.1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x) * torch.sigmoid(self.gate(x))
        return self.b(self.scale * torch.relu(h) ** 2 + self.shift)


def _group(model: nn.Module, inputs: torch.Tensor, layer_name: str, idxs: list[int]) -> list[tuple[str, str, list[int]]]:
    graph = tp.DependencyGraph().build_dependency(model, inputs)
    layer = model.get_submodule(layer_name)
    fn = tp.prune_linear_out_channels if isinstance(layer, nn.Linear) else tp.prune_conv_out_channels
    return [(dep.target.name, dep.kind, list(i)) for dep, i in graph.get_pruning_group(layer, fn, idxs)]


def _prune(layer_name: str, idxs: list[int]):
    def prune(graph: tp.DependencyGraph, model: nn.Module) -> None:
        layer = model.get_submodule(layer_name)
        fn = tp.prune_linear_out_channels if isinstance(layer, nn.Linear) else tp.prune_conv_out_channels
        group = graph.get_pruning_group(layer, fn, idxs)
        assert graph.check_pruning_group(group)
        group.prune()
    return prune


def test_a_head_goes_with_its_own_channels_and_the_shared_norm_weight_stays() -> None:
    x = torch.randn(2, 5, 6)
    assert _group(PerHeadNorm(), x, "a", [4]) == [("a", "out", [4, 5, 6, 7]), ("b", "in", [4, 5, 6, 7])]
    assert_prune_equivalent(PerHeadNorm(), x, _prune("a", [4, 5, 6, 7]))


def test_each_position_goes_with_both_halves_it_averages() -> None:
    x = torch.randn(2, 3, 4, 4)
    assert _group(MeanOfHalves(), x, "a", [1]) == [("a", "out", [1, 5]), ("b", "in", [1])]
    assert_prune_equivalent(MeanOfHalves(), x, _prune("a", [1, 5, 2, 6]))


def test_a_per_token_gate_and_scalar_parameters_tie_no_channels_together() -> None:
    x = torch.randn(2, 5, 6)
    assert _group(Gated(), x, "a", [3]) == [("a", "out", [3]), ("b", "in", [3])]
    assert_prune_equivalent(Gated(), x, _prune("a", [0, 3, 7]))
