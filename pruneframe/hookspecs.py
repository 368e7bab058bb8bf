"""The hook specifications, at the import path plugins use: ``from pruneframe.hookspecs import RegisterLayerPruner``.

They live in ``pruneframe.registry.hookspecs``; see there.
"""
from .registry.hookspecs import (  # noqa: F401 - re-exported
    RegisterFixup,
    RegisterImportance,
    RegisterLayerPruner,
    RegisterModuleHint,
    RegisterOpHandler,
    hookimpl,
    hookspec,
    pruneframe_fixups,
    pruneframe_importances,
    pruneframe_layer_pruners,
    pruneframe_module_hints,
    pruneframe_op_handlers,
)
