"""Pruners: ``BasePruningFunc`` for one layer type, and ``MetaPruner`` for a whole model."""
from __future__ import annotations

from ..layer_pruner import BasePruningFunc, DeclarativeLayerPruner, LayerPruner
from .meta_pruner import MetaPruner, linear_scheduler

BasePruner = MetaPruner  # Torch-Pruning's names for the same pruner
MagnitudePruner = MetaPruner

__all__ = ["BasePruner", "BasePruningFunc", "DeclarativeLayerPruner", "LayerPruner", "MagnitudePruner", "MetaPruner",
           "linear_scheduler"]
