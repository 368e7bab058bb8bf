"""Finds, loads and indexes pruneframe plugins.

Built-in and third-party plugins take one path: the ``pruneframe.plugins``
entry-point group. Environment variables:

  PRUNEFRAME_PLUGINS          comma-separated entry-point names: load only these
  PRUNEFRAME_DISABLE_PLUGINS  comma-separated entry-point names: never load these
  PRUNEFRAME_STRICT_PLUGINS   "1": a plugin that fails to import is an error, not a warning
"""
from __future__ import annotations

import os
import sys
import threading
import warnings
from typing import Any, Callable, Iterable

import attrs
import pluggy
import torch

from . import hookspecs
from .errors import PluginLoadError, PluginLoadWarning

if sys.version_info >= (3, 12):
    from importlib.metadata import EntryPoint, entry_points
else:  # the backport knows EntryPoint.dist on every supported Python
    from importlib_metadata import EntryPoint, entry_points

ENTRY_POINT_GROUP = "pruneframe.plugins"
BUILTIN_DISTRIBUTION = "pruneframe"
ENV_ALLOW = "PRUNEFRAME_PLUGINS"
ENV_BLOCK = "PRUNEFRAME_DISABLE_PLUGINS"
ENV_STRICT = "PRUNEFRAME_STRICT_PLUGINS"


@attrs.frozen
class PluginInfo:
    """One loaded plugin: where it came from and what it serves."""

    name: str
    distribution: str
    version: str
    module: str
    hooks: tuple[str, ...]
    builtin: bool


@attrs.frozen
class LayerPrunerEntry:
    """A layer pruner as a plugin registered it."""

    pruner: Any
    module_types: tuple[type, ...] = attrs.field(converter=tuple)
    name: str | None
    plugin: str
    builtin: bool


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


class UnknownImportanceError(KeyError, ValueError):
    """No loaded plugin registered an importance criterion of this name."""

    def __str__(self) -> str:  # KeyError would show the message quoted
        return str(self.args[0]) if self.args else ""


def _env_names(var: str) -> set[str] | None:
    raw = os.environ.get(var, "").strip()
    return {n.strip() for n in raw.split(",") if n.strip()} if raw else None


def _op_key(op: Any) -> Any:
    """Ops are matched by overload, or by packet (every overload of it)."""
    return op


def _op_label(op: Any) -> str:
    return str(op)


class Registry:
    """Everything the loaded plugins registered, with precedence-aware lookups."""

    def __init__(self, plugins: list[PluginInfo], layer_pruners: list[LayerPrunerEntry], op_handlers: list[OpHandlerEntry],
                 hints: list[ModuleHookEntry] = (), fixups: list[ModuleHookEntry] = (),
                 importances: list[ImportanceEntry] = ()):
        self.plugins = plugins
        self.hints = list(hints)
        self.fixups = list(fixups)
        # third-party plugins first; within a tier the plugin loaded first keeps a name, as for layer types
        self.importances = sorted(importances, key=lambda e: e.builtin)
        self._importance_by_name: dict[str, ImportanceEntry] = {}
        for entry in self.importances:
            for importance_name in entry.names:
                self._importance_by_name.setdefault(importance_name, entry)
        # third-party plugins first, so they override built-ins of the same type
        self.layer_pruners = sorted(layer_pruners, key=lambda e: e.builtin)
        self.op_handlers = sorted(op_handlers, key=lambda e: e.builtin)
        self._by_type: dict[type, LayerPrunerEntry] = {}
        for entry in reversed(self.layer_pruners):
            for t in entry.module_types:
                self._by_type[t] = entry
        # One lookup table per tier, third-party first: a third-party registration of a whole op
        # (every overload) or a predicate still beats a built-in registration of one overload.
        self._tiers: list[tuple[dict[Any, OpHandlerEntry], list[OpHandlerEntry]]] = []
        for builtin in (False, True):
            by_op: dict[Any, OpHandlerEntry] = {}
            tier = [e for e in self.op_handlers if e.builtin == builtin]
            for entry in reversed(tier):
                for op in entry.ops:
                    by_op[_op_key(op)] = entry
            self._tiers.append((by_op, [e for e in tier if e.predicate is not None]))
        self._functional: dict[str, Callable[..., Any]] = {}
        for entry in reversed(self.layer_pruners):
            if entry.name:
                self._functional[f"prune_{entry.name}_out_channels"] = entry.pruner.prune_out_channels
                self._functional[f"prune_{entry.name}_in_channels"] = entry.pruner.prune_in_channels
        self._op_cache: dict[Any, OpHandlerEntry | None] = {}

    def layer_pruner(self, module_type: type, customized: dict[type, Any] | None = None) -> Any:
        """The pruner for ``module_type``: most specific class of its MRO first, customized before plugins."""
        for cls in module_type.__mro__:
            if customized and cls in customized:
                return customized[cls]
            entry = self._by_type.get(cls)
            if entry is not None:
                return entry.pruner
        return None

    def layer_pruner_entry(self, pruner: Any) -> LayerPrunerEntry | None:
        for entry in self.layer_pruners:
            if entry.pruner is pruner:
                return entry
        return None

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

    def functional_names(self) -> list[str]:
        return sorted(self._functional)

    def functional(self, name: str) -> Callable[..., Any] | None:
        return self._functional.get(name)

    def importance(self, name: str) -> Callable[..., Any]:
        """The factory of the importance criterion registered as ``name`` (third-party before built-in)."""
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

    def describe(self) -> list[dict[str, Any]]:
        """What ``pruneframe plugins`` prints: one dict per plugin."""
        out = []
        for info in self.plugins:
            layers = sorted(
                f"{t.__module__}.{t.__qualname__}" for e in self.layer_pruners if e.plugin == info.name for t in e.module_types
            )
            ops = sorted(
                {_op_label(op) for e in self.op_handlers if e.plugin == info.name for op in e.ops}
                | {f"<{e.name}>" for e in self.op_handlers if e.plugin == info.name and e.predicate is not None}
            )
            hooked = sorted(
                f"{t.__module__}.{t.__qualname__}" for e in [*self.hints, *self.fixups] if e.plugin == info.name for t in e.module_types
            )
            layers = sorted(set(layers) | set(hooked))
            functional = sorted(
                f"prune_{e.name}_{kind}_channels" for e in self.layer_pruners if e.plugin == info.name and e.name for kind in ("out", "in")
            )
            importance_names = sorted(n for e in self.importances if e.plugin == info.name for n in e.names)
            out.append(
                {
                    "name": info.name,
                    "distribution": info.distribution,
                    "version": info.version,
                    "module": info.module,
                    "builtin": info.builtin,
                    "hooks": list(info.hooks),
                    "module_types": layers,
                    "ops": ops,
                    "functions": functional,
                    "importances": importance_names,
                }
            )
        return out


def _distribution(ep: EntryPoint) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "<unknown>", "<unknown>"
    return dist.metadata["Name"] or "<unknown>", dist.version or "<unknown>"


def _strict() -> bool:
    return os.environ.get(ENV_STRICT, "") not in ("", "0", "false", "False")


def _report(name: str, dist_name: str, what: str, exc: BaseException) -> None:
    """A plugin failed: an error under PRUNEFRAME_STRICT_PLUGINS, else a warning naming it; the others keep working."""
    message = f'Error {what} plugin "{name}" from distribution "{dist_name}": {type(exc).__name__}: {exc}'
    if _strict():
        raise PluginLoadError(message) from exc
    warnings.warn(
        f"{message}. It is skipped; the other plugins keep working. "
        f"Set {ENV_BLOCK}={name} to silence this, or {ENV_STRICT}=1 to make it an error.",
        PluginLoadWarning,
        stacklevel=4,
    )


def _load_entry_points() -> list[tuple[str, str, str, Any]]:
    allow, block = _env_names(ENV_ALLOW), _env_names(ENV_BLOCK)
    loaded: list[tuple[str, str, str, Any]] = []
    seen: dict[str, str] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        dist_name, version = _distribution(ep)
        if (allow is not None and ep.name not in allow) or (block is not None and ep.name in block):
            continue
        if seen.get(ep.name) == dist_name:  # the same distribution found twice on sys.path
            continue
        name = ep.name
        if ep.name in seen:  # two distributions chose one name: keep both, under distinct names
            name = f"{dist_name}:{ep.name}"
            warnings.warn(
                f'plugin name "{ep.name}" is used by distributions "{seen[ep.name]}" and "{dist_name}"; '
                f'the second is loaded as "{name}"',
                PluginLoadWarning,
                stacklevel=3,
            )
        try:
            module = ep.load()
        except Exception as exc:  # any import-time failure of a plugin is reported, by name
            _report(ep.name, dist_name, f"importing ({ep.value})", exc)
            continue
        seen.setdefault(ep.name, dist_name)
        loaded.append((name, dist_name, version, module))
    return loaded


def _collect(pm: pluggy.PluginManager, name: str, module: Any, builtin: bool) -> tuple[list, list, list, list, list]:
    """Call one plugin's hooks and return what it registered: layer pruners, op handlers, hints, fix-ups, importances."""
    layers: list[LayerPrunerEntry] = []
    ops_: list[OpHandlerEntry] = []
    hints: list[ModuleHookEntry] = []
    fixups: list[ModuleHookEntry] = []
    importances: list[ImportanceEntry] = []

    def register_layer(pruner: Any, module_types: Iterable[type] = (), *, name: str | None = None) -> None:
        types = tuple(module_types)
        for t in types:
            if not isinstance(t, type):
                raise TypeError(f"{t!r} is not a class; register module types such as nn.Conv2d")
        layers.append(LayerPrunerEntry(pruner, types, name, plugin_name, builtin))

    def register_op(ops: Any, handler: Callable[..., None], *, name: str) -> None:
        if isinstance(ops, (torch._ops.OpOverloadPacket, torch._ops.OpOverload)):
            ops = [ops]  # one op given bare, not in a list
        elif callable(ops):
            ops_.append(OpHandlerEntry((), ops, handler, name, plugin_name, builtin))
            return
        ops = list(ops)
        for op in ops:
            if not isinstance(op, (torch._ops.OpOverloadPacket, torch._ops.OpOverload)):
                raise TypeError(f"{op!r} is not an ATen op; register ops such as torch.ops.aten.cat or torch.ops.aten.cat.default")
        ops_.append(OpHandlerEntry(tuple(ops), None, handler, name, plugin_name, builtin))

    def module_hook(target: list[ModuleHookEntry]) -> Callable[..., None]:
        def register(module_types: Iterable[type], function: Callable[..., None], *, name: str) -> None:
            target.append(ModuleHookEntry(tuple(module_types), function, name, plugin_name, builtin))
        return register

    def register_importance(name: str, factory: Callable[..., Any], *, aliases: Iterable[str] = ()) -> None:
        if isinstance(aliases, str):
            raise TypeError(f"aliases of importance {name!r} must be a list of names, not the string {aliases!r}")
        aliases = tuple(aliases)
        for given in (name, *aliases):
            if not isinstance(given, str) or not given:
                raise TypeError(f"importance names must be non-empty strings, not {given!r}")
        if not callable(factory):
            raise TypeError(f"the factory of importance {name!r} must be callable (an Importance class), not {factory!r}")
        importances.append(ImportanceEntry(name, factory, aliases, plugin_name, builtin))

    plugin_name = name
    calls = [
        (pm.hook.pruneframe_module_hints, module_hook(hints)),
        (pm.hook.pruneframe_fixups, module_hook(fixups)),
        (pm.hook.pruneframe_layer_pruners, register_layer),
        (pm.hook.pruneframe_op_handlers, register_op),
        (pm.hook.pruneframe_importances, register_importance),
    ]
    for caller, register in calls:
        for impl in caller.get_hookimpls():
            if impl.plugin is module:
                impl.function(register=register)
    return layers, ops_, hints, fixups, importances


def build_registry(extra_plugins: Iterable[tuple[str, Any]] = ()) -> Registry:
    """Load every entry-point plugin (and ``extra_plugins``) and collect what they register.

    A plugin that fails to import, to register with pluggy, or inside one of
    its hooks is reported by name (see ``PRUNEFRAME_STRICT_PLUGINS``) and left
    out; a misspelt hook name is always an error.
    """
    pm = pluggy.PluginManager("pruneframe")
    pm.add_hookspecs(hookspecs)
    found = []
    for name, dist_name, version, module in _load_entry_points() + [(n, "<in-process>", "", o) for n, o in extra_plugins]:
        if pm.is_registered(module):
            continue  # already there (an in-process plugin that is installed too)
        try:
            pm.register(module, name=name)
        except pluggy.PluginValidationError as exc:
            _report(name, dist_name, "registering", exc)
            continue
        found.append((name, dist_name, version, module))
    pm.check_pending()  # a misspelt hook name is an error, not a silent no-op

    infos: list[PluginInfo] = []
    entries: tuple[list, list, list, list, list] = ([], [], [], [], [])
    for name, dist_name, version, module in found:
        builtin = dist_name == BUILTIN_DISTRIBUTION
        try:
            collected = _collect(pm, name, module, builtin)
        except Exception as exc:  # a plugin's hook raised: report it by name, keep the others
            _report(name, dist_name, "running the hooks of", exc)
            continue
        for all_, mine in zip(entries, collected):
            all_.extend(mine)
        hooks = tuple(sorted(h.name for h in pm.get_hookcallers(module) or ()))
        infos.append(PluginInfo(name, dist_name, version, getattr(module, "__name__", repr(module)), hooks, builtin))
    return Registry(infos, *entries)


_lock = threading.Lock()
_registry: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry, loaded on first use."""
    global _registry
    with _lock:
        if _registry is None:
            _registry = build_registry()
        return _registry


def reload_plugins() -> Registry:
    """Forget the loaded plugins and load them again (after installing one, or changing the environment)."""
    global _registry
    with _lock:
        _registry = None
    return get_registry()
