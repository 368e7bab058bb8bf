"""A layer pruner for timm's weight-standardised convolutions with a gain (``ScaledStdConv2d``, NF-Nets and NF-RegNets).

They are ``nn.Conv2d`` subclasses with one more per-output-channel tensor,
``gain`` of shape ``(out_channels, 1, 1, 1)``, which their forward passes to
``F.batch_norm`` as the weight of the standardisation. pruneframe's conv
pruner would prune the weight and leave ``gain`` at the old width. This
pruner is the registered conv pruner plus ``gain``; ``scale`` (``gamma /
sqrt(fan_in)``) keeps its trained value.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from pruneframe import BasePruningFunc
from pruneframe.layer_pruner import keep_index, select_


def _conv_pruner() -> Any:
    """The conv pruner of highest precedence, looked up when first needed (not while plugins are loading)."""
    from pruneframe.function import registered_pruner

    return registered_pruner("conv")


class ScaledStdConvPruner(BasePruningFunc):
    """The conv pruner's work, and ``gain`` loses the same output channels as ``weight``."""

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        n = layer.out_channels
        _conv_pruner().prune_out_channels(layer, idxs)  # validates the indices first
        select_(layer, "gain", 0, keep_index(n, torch.as_tensor(list(idxs), dtype=torch.long)))
        return layer

    def prune_in_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        return _conv_pruner().prune_in_channels(layer, idxs)

    def get_out_channels(self, layer: nn.Module) -> int:
        return layer.out_channels

    def get_in_channels(self, layer: nn.Module) -> int:
        return layer.in_channels

    def get_out_channel_groups(self, layer: nn.Module) -> int:
        return _conv_pruner().get_out_channel_groups(layer)

    def get_in_channel_groups(self, layer: nn.Module) -> int:
        return _conv_pruner().get_in_channel_groups(layer)

    def output_channel_dims(self, layer, outputs):
        return _conv_pruner().output_channel_dims(layer, outputs)

    def input_channel_dims(self, layer, inputs):
        return _conv_pruner().input_channel_dims(layer, inputs)

    def in_out_coupled(self, layer: nn.Module) -> bool:
        return _conv_pruner().in_out_coupled(layer)

    def couplings(self, layer: nn.Module, n_out: int, n_in: int):
        return _conv_pruner().couplings(layer, n_out, n_in)

    def check_prune(self, layer: nn.Module, kind: str, idxs: Sequence[int]) -> str | None:
        return _conv_pruner().check_prune(layer, kind, idxs)

    def mask_in_channels(self, layer: nn.Module, idxs: Sequence[int]) -> None:
        _conv_pruner().mask_in_channels(layer, idxs)

    def mask_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> None:
        _conv_pruner().mask_out_channels(layer, idxs)
