"""pruneframe: structural pruning for PyTorch, with exact dependency graphs and plugins.

Drop-in for Torch-Pruning's public API: ``import pruneframe as tp``.

The functional names (``prune_conv_out_channels``, ``prune_linear_in_channels``,
...) are provided by plugins; they resolve here on first use.
"""
from __future__ import annotations

import importlib
from typing import Any

# Names are imported on first use (PEP 562), so ``import pruneframe`` -- and the command line's --help -- cost
# nothing until something is used; ``import torch`` alone takes over a second.
_NAMES = {
    "MissingPluginWarning": "errors", "ModelStopsRunningError": "errors", "PluginLoadError": "errors",
    "PluginLoadWarning": "errors", "PruningError": "errors", "UnloadableError": "errors", "UnsupportedOpWarning": "errors",
    "Dependency": "graph", "DependencyGraph": "graph", "Group": "graph", "GroupItem": "graph", "IndexMapping": "graph",
    "Member": "graph", "Node": "graph", "PruneRecord": "graph",
    "hookimpl": "hookspecs",
    "BasePruningFunc": "layer_pruner", "ChannelDim": "layer_pruner", "Coupling": "layer_pruner",
    "DeclarativeLayerPruner": "layer_pruner", "LayerPruner": "layer_pruner", "TensorDims": "layer_pruner",
    "load_pruned": "app.model_sources",
    "ActivationImportance": "importance", "NotCalibratedError": "importance", "BlockInfluenceImportance": "importance",
    "kept_whole": "app.report", "layer_sizes": "app.report", "layer_table": "app.report", "print_prune_report": "app.report",
    "KeptWhole": "graph",
    "load": "plan", "load_state_dict": "plan", "save": "plan", "state_dict": "plan",
    "get_registry": "registry", "reload_plugins": "registry",
    "PrunerBox": "function",
    # Torch-Pruning exports its pruners at the top level too
    "BNScalePruner": "pruner", "BasePruner": "pruner", "GroupNormPruner": "pruner", "GrowingRegPruner": "pruner",
    "MagnitudePruner": "pruner", "MetaPruner": "pruner",
}
_MODULES = ("app", "errors", "function", "graph", "hookspecs", "importance", "layer_pruner", "plan", "plugin_manager", "pruner",
            "registry", "runtime", "testing", "tracing", "utils", "wrappers")
_MODULE_ALIASES = {"serialization": "plan", "algorithms": "pruner"}  # Torch-Pruning's module names

__version__ = "0.1.0"

__all__ = [
    "ActivationImportance",
    "BNScalePruner",
    "BasePruner",
    "BasePruningFunc",
    "BlockInfluenceImportance",
    "ChannelDim",
    "Coupling",
    "DeclarativeLayerPruner",
    "Dependency",
    "DependencyGraph",
    "Group",
    "GroupItem",
    "GroupNormPruner",
    "GrowingRegPruner",
    "IndexMapping",
    "LayerPruner",
    "MagnitudePruner",
    "KeptWhole",
    "Member",
    "MissingPluginWarning",
    "NotCalibratedError",
    "MetaPruner",
    "ModelStopsRunningError",
    "Node",
    "PluginLoadError",
    "PluginLoadWarning",
    "PruneRecord",
    "PrunerBox",
    "PruningError",
    "TensorDims",
    "UnloadableError",
    "UnsupportedOpWarning",
    "function",
    "get_registry",
    "hookimpl",
    "importance",
    "kept_whole",
    "layer_sizes",
    "layer_table",
    "load",
    "load_pruned",
    "load_state_dict",
    "print_prune_report",
    "pruner",
    "reload_plugins",
    "save",
    "state_dict",
    "utils",
]


def __getattr__(name: str) -> Any:
    if name in _NAMES:
        value = getattr(importlib.import_module(f".{_NAMES[name]}", __name__), name)
        globals()[name] = value
        return value
    if name in _MODULES:
        return importlib.import_module(f".{name}", __name__)
    if name in _MODULE_ALIASES:
        return importlib.import_module(f".{_MODULE_ALIASES[name]}", __name__)
    if name.startswith("prune_") and name.endswith("_channels"):
        registry = __getattr__("get_registry")()
        fn = registry.functional(name)
        if fn is not None:
            return fn
        known = ", ".join(registry.functional_names())
        raise AttributeError(f"pruneframe has no {name!r}: no installed plugin provides it. Known: {known}")
    raise AttributeError(f"module 'pruneframe' has no attribute {name!r}")


def __dir__() -> list[str]:
    functional = __getattr__("get_registry")().functional_names()
    return sorted(set(globals()) | set(_NAMES) | set(_MODULES) | set(_MODULE_ALIASES) | set(functional))
