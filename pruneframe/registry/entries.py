"""What plugins register, as small frozen records that remember which plugin registered them."""
from __future__ import annotations

from typing import Any, Callable, Iterable

import attrs

Finder = Callable[[Any], Iterable[Any]]  # a model -> the modules a registration serves (found by their structure)


@attrs.frozen
class PluginInfo:
    """One loaded plugin: where it came from and which hooks it implements."""

    name: str
    distribution: str
    version: str
    module: str
    hooks: tuple[str, ...]
    builtin: bool


@attrs.frozen
class PluginFailure:
    """A plugin that could not be loaded (``what`` failed: importing, registering, running its hooks)."""

    name: str
    distribution: str
    what: str
    error: str


@attrs.frozen
class LayerPrunerEntry:
    """A layer pruner as a plugin registered it."""

    pruner: Any
    module_types: tuple[type, ...] = attrs.field(converter=tuple)
    name: str | None
    plugin: str
    builtin: bool
    find: Finder | None = None  # model -> the modules it serves; their classes join module_types (Registry.discover)


@attrs.frozen
class OpHandlerEntry:
    """An op handler as a plugin registered it: for listed ops, or for every op a predicate accepts."""

    ops: tuple[Any, ...] = attrs.field(converter=tuple)
    predicate: Callable[[Any], bool] | None
    handler: Callable[..., None]
    name: str
    plugin: str
    builtin: bool


@attrs.frozen
class ModuleHookEntry:
    """A module hint or fix-up as a plugin registered it."""

    module_types: tuple[type, ...] = attrs.field(converter=tuple)
    function: Callable[..., None]
    name: str
    plugin: str
    builtin: bool
    find: Finder | None = None  # as LayerPrunerEntry.find


@attrs.frozen
class ImportanceEntry:
    """An importance criterion as a plugin registered it: a factory, under a name and its aliases."""

    name: str
    factory: Callable[..., Any]
    aliases: tuple[str, ...] = attrs.field(converter=tuple)
    plugin: str
    builtin: bool

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)


@attrs.frozen
class ResolvedPruner:
    """The answer to "who prunes this layer": the pruner and the plugin (or graph) it came from."""

    pruner: Any
    plugin: str


CUSTOMIZED = "<register_customized_layer>"


class UnknownImportanceError(KeyError, ValueError):
    """No loaded plugin registered an importance criterion of this name."""

    def __str__(self) -> str:  # KeyError would show the message quoted
        return str(self.args[0]) if self.args else ""
