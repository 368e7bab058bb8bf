"""pruneframe: structural pruning for PyTorch, with exact dependency graphs and plugins.

Drop-in for Torch-Pruning's public API: ``import pruneframe as tp``.

The functional names (``prune_conv_out_channels``, ``prune_linear_in_channels``,
...) are provided by plugins; they resolve here on first use.
"""
from __future__ import annotations

from typing import Any

from . import importance, pruner, utils
from .errors import ModelStopsRunningError, PluginLoadError, PluginLoadWarning, PruningError, UnsupportedOpWarning
from .graph import Dependency, DependencyGraph, Group, GroupItem, IndexMapping, Member, Node, PruneRecord
from .hookspecs import hookimpl
from .layer_pruner import BasePruningFunc, ChannelDim, Coupling, DeclarativeLayerPruner, LayerPruner, TensorDims
from .app.model_sources import load_pruned
from .plan import load_state_dict, state_dict
from .registry import get_registry, reload_plugins

__version__ = "0.1.0"

__all__ = [
    "BasePruningFunc",
    "ChannelDim",
    "Coupling",
    "DeclarativeLayerPruner",
    "Dependency",
    "DependencyGraph",
    "Group",
    "GroupItem",
    "IndexMapping",
    "LayerPruner",
    "Member",
    "ModelStopsRunningError",
    "Node",
    "PluginLoadError",
    "PluginLoadWarning",
    "PruneRecord",
    "PruningError",
    "TensorDims",
    "UnsupportedOpWarning",
    "get_registry",
    "hookimpl",
    "importance",
    "load_pruned",
    "load_state_dict",
    "pruner",
    "reload_plugins",
    "state_dict",
    "utils",
]


def __getattr__(name: str) -> Any:
    if name.startswith("prune_") and name.endswith("_channels"):
        fn = get_registry().functional(name)
        if fn is not None:
            return fn
        known = ", ".join(get_registry().functional_names())
        raise AttributeError(f"pruneframe has no {name!r}: no installed plugin provides it. Known: {known}")
    raise AttributeError(f"module 'pruneframe' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(get_registry().functional_names()))
