"""Pruners: ``BasePruningFunc`` for one layer type, and ``MetaPruner`` for a whole model."""
from __future__ import annotations

from ..layer_pruner import BasePruningFunc, DeclarativeLayerPruner, LayerPruner
from .meta_pruner import MetaPruner, linear_scheduler
from .sparse_training import BNScalePruner, GroupNormPruner

BasePruner = MetaPruner  # Torch-Pruning's names for the same pruner
MagnitudePruner = MetaPruner

__all__ = ["BNScalePruner", "BasePruner", "BasePruningFunc", "GroupNormPruner", "DeclarativeLayerPruner", "LayerPruner", "MagnitudePruner", "MetaPruner",
           "linear_scheduler"]
