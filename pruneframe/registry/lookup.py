"""``Registry``: everything the loaded plugins registered, and the one place that answers who handles what.

The graph, the tracer and plan replay all ask it the same questions: which
pruner serves a layer (``resolve``), which function prunes its output or input
channels (``handler``), which hints and fix-ups apply to a model's modules
(``module_hooks``), which handler follows an ATen op (``op_handler``).
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Iterable, Mapping

from torch import nn

from ..errors import PruningError

from .entries import (
    CUSTOMIZED,
    ImportanceEntry,
    LayerPrunerEntry,
    ModuleHookEntry,
    OpHandlerEntry,
    PluginFailure,
    PluginInfo,
    ResolvedPruner,
    UnknownImportanceError,
)


def _type_name(t: type) -> str:
    return f"{t.__module__}.{t.__qualname__}"


class Registry:
    """What the loaded plugins registered, each list in order of precedence (the order their hooks ran)."""

    def __init__(self, plugins: list[PluginInfo], layer_pruners: list[LayerPrunerEntry], op_handlers: list[OpHandlerEntry],
                 hints: Iterable[ModuleHookEntry] = (), fixups: Iterable[ModuleHookEntry] = (),
                 importances: Iterable[ImportanceEntry] = (), failures: Iterable[PluginFailure] = ()):
        self.plugins = plugins
        self.failures = list(failures)
        self.hints = list(hints)
        self.fixups = list(fixups)
        self.layer_pruners = list(layer_pruners)
        self.op_handlers = list(op_handlers)
        self.importances = list(importances)
        self._importance_by_name: dict[str, ImportanceEntry] = {}
        for entry in self.importances:
            for importance_name in entry.names:
                self._importance_by_name.setdefault(importance_name, entry)
        self._by_type: dict[type, LayerPrunerEntry] = {}
        for entry in self.layer_pruners:
            for t in entry.module_types:
                self._by_type.setdefault(t, entry)
        self._entry_of_pruner = {id(e.pruner): e for e in reversed(self.layer_pruners)}
        # Ops: every third-party registration is consulted before any built-in one; in each tier an exact
        # overload, then the whole op, then predicates, each in order of precedence.
        self._tiers: list[tuple[dict[Any, OpHandlerEntry], list[OpHandlerEntry]]] = []
        for builtin in (False, True):
            by_op: dict[Any, OpHandlerEntry] = {}
            tier = [e for e in self.op_handlers if e.builtin == builtin]
            for entry in tier:
                for op in entry.ops:
                    by_op.setdefault(op, entry)
            self._tiers.append((by_op, [e for e in tier if e.predicate is not None]))
        self._functional: dict[str, Callable[..., Any]] = {}
        for entry in self.layer_pruners:
            if entry.name:
                self._functional.setdefault(f"prune_{entry.name}_out_channels", entry.pruner.prune_out_channels)
                self._functional.setdefault(f"prune_{entry.name}_in_channels", entry.pruner.prune_in_channels)
        self._op_cache: dict[Any, OpHandlerEntry | None] = {}
        self._hooks_of_type: dict[type, tuple[list[ModuleHookEntry], list[ModuleHookEntry]]] = {}
        self._found: dict[int, tuple[type, ...]] = {}  # id(entry) -> classes its ``find`` served so far

    # --- classes found in a model -------------------------------------------------------------
    def discover(self, model: nn.Module) -> None:
        """Let every registration with a ``find`` look at ``model``: the classes of the modules it returns are served
        by it from now on. A layer pruner never takes a class some registration already serves by that exact type."""
        finders = [e for e in [*self.layer_pruners, *self.hints, *self.fixups] if e.find is not None]
        for entry in finders:
            try:
                found = {type(m) for m in entry.find(model) if isinstance(m, nn.Module)}
            except Exception as exc:
                raise PruningError(f"the finder of {entry.name!r} (plugin {entry.plugin!r}) failed on "
                                   f"{type(model).__name__}: {type(exc).__name__}: {exc}. Disable the plugin with "
                                   f"PRUNEFRAME_DISABLE_PLUGINS={entry.plugin} or report it to its authors.") from exc
            new = found - set(entry.module_types) - set(self._found.get(id(entry), ()))
            if isinstance(entry, LayerPrunerEntry):
                new = {cls for cls in new if cls not in self._by_type}
                for cls in new:
                    self._by_type[cls] = entry
            if new:
                self._found[id(entry)] = (*self._found.get(id(entry), ()), *sorted(new, key=_type_name))
                self._hooks_of_type.clear()

    def _types_of(self, entry: Any) -> tuple[type, ...]:
        """The classes ``entry`` serves: those it was registered for and those its ``find`` found."""
        return (*entry.module_types, *self._found.get(id(entry), ()))

    # --- layers -------------------------------------------------------------------------
    def resolve(self, module_type: type, customized: Mapping[type, Any] | None = None) -> ResolvedPruner | None:
        """Who prunes ``module_type``: the most specific class of its MRO first, a graph's customized pruners before plugins."""
        for cls in module_type.__mro__:
            if customized and cls in customized:
                return ResolvedPruner(customized[cls], CUSTOMIZED)
            entry = self._by_type.get(cls)
            if entry is not None:
                return ResolvedPruner(entry.pruner, entry.plugin)
        return None

    def registered_for(self, module_type: type, customized: Mapping[type, Any] | None = None) -> type | None:
        """The class of ``module_type``'s MRO its pruner was registered for (``module_type`` itself, or a base), or None."""
        for cls in module_type.__mro__:
            if (customized and cls in customized) or cls in self._by_type:
                return cls
        return None

    def layer_pruner(self, module_type: type, customized: Mapping[type, Any] | None = None) -> Any:
        """The pruner for ``module_type`` (see ``resolve``), or None."""
        found = self.resolve(module_type, customized)
        return found.pruner if found is not None else None

    def layer_pruner_entry(self, pruner: Any) -> LayerPrunerEntry | None:
        """The registration of ``pruner``, or None for a pruner no plugin registered."""
        return self._entry_of_pruner.get(id(pruner))

    @staticmethod
    def handler(pruner: Any, kind: str, dim: int | None = None) -> Callable[..., Any]:
        """The function of ``pruner`` that removes ``kind`` ("out"/"in") channels; a raw parameter's takes its ``dim``."""
        if dim is not None:
            return functools.partial(pruner.prune_out_channels, dim=dim)
        return pruner.prune_out_channels if kind == "out" else pruner.prune_in_channels

    def module_hooks(self, model: nn.Module) -> tuple[list[tuple[nn.Module, ModuleHookEntry]], list[tuple[nn.Module, ModuleHookEntry]]]:
        """The hints and the fix-ups that apply to ``model``'s modules, as (module, entry) pairs in module order."""
        hints: list[tuple[nn.Module, ModuleHookEntry]] = []
        fixups: list[tuple[nn.Module, ModuleHookEntry]] = []
        for module in model.modules():
            found = self._hooks_for(type(module))
            hints += [(module, e) for e in found[0]]
            fixups += [(module, e) for e in found[1]]
        return hints, fixups

    def _hooks_for(self, cls: type) -> tuple[list[ModuleHookEntry], list[ModuleHookEntry]]:
        found = self._hooks_of_type.get(cls)
        if found is None:
            found = self._hooks_of_type[cls] = (
                [e for e in self.hints if issubclass(cls, self._types_of(e))],
                [e for e in self.fixups if issubclass(cls, self._types_of(e))],
            )
        return found

    # --- ops ------------------------------------------------------------------------------
    def op_handler(self, op: Any) -> OpHandlerEntry | None:
        """The handler for an ATen op overload: third-party before built-in; in each, overload, packet, predicates."""
        try:
            return self._op_cache[op]
        except KeyError:
            pass
        found = None
        packet = getattr(op, "overloadpacket", None)
        for by_op, predicates in self._tiers:
            found = by_op.get(op) or (by_op.get(packet) if packet is not None else None)
            if found is None:
                found = next((c for c in predicates if c.predicate(op)), None)
            if found is not None:
                break
        self._op_cache[op] = found
        return found

    # --- functional names and importances ---------------------------------------------------
    def functional_names(self) -> list[str]:
        return sorted(self._functional)

    def functional(self, name: str) -> Callable[..., Any] | None:
        return self._functional.get(name)

    def importance(self, name: str) -> Callable[..., Any]:
        """The factory of the importance criterion registered as ``name`` (the highest-precedence plugin's)."""
        return self.importance_entry(name).factory

    def importance_entry(self, name: str) -> ImportanceEntry:
        """The registration behind ``name``: factory, aliases, and the plugin that made it."""
        entry = self._importance_by_name.get(name) if isinstance(name, str) else None
        if entry is None:
            known = ", ".join(self.importance_names()) or "none (no plugin registers importances)"
            raise UnknownImportanceError(
                f"no importance criterion is registered as {name!r}. Known: {known}. Install the plugin that "
                "provides it, or register one with the pruneframe_importances hook."
            )
        return entry

    def importance_names(self) -> list[str]:
        """Every registered importance name and alias, sorted."""
        return sorted(self._importance_by_name)

    # --- listing ------------------------------------------------------------------------------
    def describe(self, failures: bool = False) -> list[dict[str, Any]]:
        """What ``pruneframe plugins`` prints: one dict per loaded plugin (and, with ``failures``, per plugin that failed)."""
        out = []
        for info in self.plugins:
            mine = lambda entries: [e for e in entries if e.plugin == info.name]  # noqa: E731
            layers = {_type_name(t) for e in mine(self.layer_pruners) for t in self._types_of(e)}
            hooked = {_type_name(t) for e in mine([*self.hints, *self.fixups]) for t in self._types_of(e)}
            ops = {str(op) for e in mine(self.op_handlers) for op in e.ops}
            ops |= {f"<{e.name}>" for e in mine(self.op_handlers) if e.predicate is not None}
            out.append({
                "name": info.name,
                "distribution": info.distribution,
                "version": info.version,
                "module": info.module,
                "builtin": info.builtin,
                "loaded": True,
                "hooks": list(info.hooks),
                "module_types": sorted(layers | hooked),
                "ops": sorted(ops),
                "functions": sorted(f"prune_{e.name}_{kind}_channels" for e in mine(self.layer_pruners) if e.name
                                    for kind in ("out", "in")),
                "importances": sorted(n for e in mine(self.importances) for n in e.names),
            })
        for failure in self.failures if failures else ():
            out.append({"name": failure.name, "distribution": failure.distribution, "loaded": False,
                        "error": f"{failure.what}: {failure.error}"})
        return out


__all__ = ["Registry", "UnknownImportanceError"]
