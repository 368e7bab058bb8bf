"""Pruners: ``BasePruningFunc`` for one layer type, and ``MetaPruner`` (and its sparse-training kin) for a whole model.

As in Torch-Pruning, ``tp.pruner`` also holds ``function`` (the layer pruner
classes), ``importance``, ``PrunerBox`` and the functional names
(``tp.pruner.prune_conv_out_channels``). ``tp.pruner.GroupNormPruner`` is the
sparse-training pruner; the layer pruner for ``nn.GroupNorm`` is
``tp.function.GroupNormPruner``.
"""
from __future__ import annotations

from typing import Any

from .. import function, importance
from ..function import PrunerBox
from ..layer_pruner import BasePruningFunc, DeclarativeLayerPruner, LayerPruner
from .growing_reg import GrowingRegPruner
from .arguments import linear_scheduler
from .depth import LayerList, LayerScore, layer_lists, rank_layers, remove_layers
from .meta_pruner import MetaPruner
from .sparse_training import BNScalePruner, GroupNormPruner
from .targets import ratio_for_target

BasePruner = MetaPruner  # Torch-Pruning's names for the same pruner
MagnitudePruner = MetaPruner


def __getattr__(name: str) -> Any:
    if name.startswith("prune_") and name.endswith("_channels"):
        return getattr(function, name)
    raise AttributeError(f"module 'pruneframe.pruner' has no attribute {name!r}")


__all__ = ["BNScalePruner", "BasePruner", "BasePruningFunc", "DeclarativeLayerPruner", "GroupNormPruner", "GrowingRegPruner",
           "LayerList", "LayerPruner", "LayerScore", "MagnitudePruner", "MetaPruner", "PrunerBox", "function", "importance",
           "layer_lists", "linear_scheduler", "rank_layers", "ratio_for_target", "remove_layers"]
