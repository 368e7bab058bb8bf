"""Pruners: ``BasePruningFunc`` for one layer type (high-level pruners build on the graph)."""
from __future__ import annotations

from ..layer_pruner import BasePruningFunc, DeclarativeLayerPruner, LayerPruner

__all__ = ["BasePruningFunc", "DeclarativeLayerPruner", "LayerPruner"]
