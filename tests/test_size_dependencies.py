"""Sizes the trace cannot see and products it must label right: the prune is either exact or refused, never silent.

- ``a @ b`` where only ``a`` holds channels, along both its rows and the
  contracted dimension (VOLO's attention over a window): the result's rows carry
  ``a``'s rows; the trace used to give the result ``a``'s label with its
  contracted dimension, of the wrong shape, and stop.
- A size read off one tensor's shape and used to reshape another, across an op
  no plugin handles (VOLO's ``unfold`` then ``reshape(B, heads, C // heads, ...)``):
  no traced op shows it, so in a model with such an op every prune is checked
  by a run, and one that breaks the model is undone.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pruneframe as tp
from pruneframe.errors import ModelStopsRunningError
from pruneframe.testing import assert_prune_equivalent


class RowsTimesConstant(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.head = nn.Linear(6, 16), nn.Linear(32, 3)
        self.register_buffer("b", torch.randn(4, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = self.a(x).view(x.shape[0], -1, 4)  # (B, rows, 4): channels along both
        return self.head((rows @ self.b).flatten(1))  # (B, rows, 8)


class SizeAcrossAnUnknownOp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.v, self.head = nn.Linear(3, 8), nn.Linear(8, 8), nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x.permute(0, 2, 3, 1))  # (B, H, W, C)
        width = h.shape[-1]
        u = F.unfold(self.v(h).permute(0, 3, 1, 2), 1)  # (B, C, H*W); no plugin handles im2col
        u = u.reshape(x.shape[0], 2, width // 2, -1)  # C read off h, used on v's output
        return self.head(u.mean((1, 3)).repeat(1, 2))


def test_a_product_of_rows_and_a_constant_keeps_the_rows_and_prunes_exactly() -> None:
    x = torch.randn(2, 6)
    graph = tp.DependencyGraph().build_dependency(RowsTimesConstant(), x)
    assert len(list(graph.get_all_groups())) == 1

    def prune(graph: tp.DependencyGraph, model: nn.Module) -> None:
        graph.get_pruning_group(model.a, tp.prune_linear_out_channels, [4, 5, 6, 7]).prune()  # row 1, whole

    assert_prune_equivalent(RowsTimesConstant(), x, prune)


def test_a_size_read_across_an_unknown_op_is_checked_and_the_breaking_prune_undone() -> None:
    model, x = SizeAcrossAnUnknownOp().eval(), torch.randn(2, 3, 4, 4)
    with pytest.warns(UserWarning, match="aten.im2col"):
        graph = tp.DependencyGraph().build_dependency(model, x)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    group = graph.get_pruning_group(model.a, tp.prune_linear_out_channels, [0, 1])
    with pytest.raises(ModelStopsRunningError, match="no longer runs on the example inputs"):
        group.prune()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with torch.no_grad():
        model(x)
