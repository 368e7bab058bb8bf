"""Layer pruner for raw ``nn.Parameter``s used directly in a forward pass (class tokens, position embeddings).

A raw parameter is pruned along one dimension: the one given in
``unwrapped_parameters=[(param, dim)]``, else its last dimension with more than
one element.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from pruneframe import BasePruningFunc, hookimpl
from pruneframe.layer_pruner import keep_index, validate_idxs


class ParameterPruner(BasePruningFunc):
    """``dim`` of a call, else the ``pruning_dim`` the pruner was made with (default: the last dimension)."""

    def __init__(self, pruning_dim: int = -1) -> None:
        super().__init__(pruning_dim)

    def prune_out_channels(self, tensor: nn.Parameter, idxs: Sequence[int], dim: int | None = None) -> nn.Parameter:
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"prune_parameter_out_channels takes an nn.Parameter, not {type(tensor).__name__}")
        dim = self.pruning_dim if dim is None else dim
        n = tensor.shape[dim]
        index = validate_idxs(tensor, idxs, n, f"dim {dim}")
        keep = keep_index(n, index, tensor.device)
        tensor.data = tensor.data.index_select(dim, keep).contiguous()
        if tensor.grad is not None:
            tensor.grad = tensor.grad.index_select(dim, keep).contiguous()
        return tensor

    prune_in_channels = prune_out_channels

    def get_out_channels(self, tensor: nn.Parameter, dim: int | None = None) -> int:
        return tensor.shape[self.pruning_dim if dim is None else dim]

    get_in_channels = get_out_channels

    def mask_in_channels(self, tensor, idxs) -> None:
        return None  # a raw parameter has no input connections of its own


@hookimpl(trylast=True)
def pruneframe_layer_pruners(register):
    register(ParameterPruner(), [nn.Parameter], name="parameter")
