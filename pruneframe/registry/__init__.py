"""The plugin registry: hook specifications, what plugins register, how they are found and loaded, and lookups."""
from .entries import (
    ImportanceEntry,
    LayerPrunerEntry,
    ModuleHookEntry,
    OpHandlerEntry,
    PluginFailure,
    PluginInfo,
    ResolvedPruner,
    UnknownImportanceError,
)
from .hookspecs import hookimpl, hookspec
from .loading import (
    BUILTIN_DISTRIBUTION,
    ENTRY_POINT_GROUP,
    ENV_ALLOW,
    ENV_BLOCK,
    ENV_STRICT,
    FRAMEWORK_GROUP,
    PluginSet,
    build_registry,
    get_registry,
    reload_plugins,
    warn_missing_family_plugins,
)
from .lookup import Registry

__all__ = [
    "BUILTIN_DISTRIBUTION", "ENTRY_POINT_GROUP", "ENV_ALLOW", "ENV_BLOCK", "ENV_STRICT", "FRAMEWORK_GROUP",
    "ImportanceEntry", "LayerPrunerEntry", "ModuleHookEntry", "OpHandlerEntry", "PluginFailure", "PluginInfo",
    "PluginSet", "Registry", "ResolvedPruner", "UnknownImportanceError", "build_registry", "get_registry",
    "hookimpl", "hookspec", "reload_plugins", "warn_missing_family_plugins",
]
