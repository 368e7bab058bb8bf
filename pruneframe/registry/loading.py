"""Finds plugins through entry points, loads them (framework plugins only once their framework is in use) and calls their hooks.

Built-in and third-party plugins take one path: the ``pruneframe.plugins``
entry-point group. A plugin for a framework names it in the
``pruneframe.frameworks`` group (``<plugin name> = "<top-level module>"``,
comma-separated for several); the process-wide registry imports such a plugin
only when that module is already imported or the model being pruned holds one
of its classes, so ``import pruneframe`` and a torchvision prune never import
transformers. Environment variables:

  PRUNEFRAME_PLUGINS          comma-separated entry-point names: load only these
  PRUNEFRAME_DISABLE_PLUGINS  comma-separated entry-point names: never load these
  PRUNEFRAME_STRICT_PLUGINS   "1": a plugin that fails to load is an error, not a warning

Hooks are called through pluggy's hook relay; each plugin's implementations run
with that plugin named as the one registering, so every registration, error and
``pruneframe plugins`` line names its plugin.
"""
from __future__ import annotations

import contextvars
import functools
import inspect
import os
import sys
import threading
import warnings
from typing import Any, Callable, Iterable

import attrs
import pluggy
import torch
from torch import nn

from ..errors import MissingPluginWarning, PluginLoadError, PluginLoadWarning
from . import hookspecs
from .entries import Finder, ImportanceEntry, LayerPrunerEntry, ModuleHookEntry, OpHandlerEntry, PluginFailure, PluginInfo
from .known_plugins import missing_family_plugins
from .lookup import Registry

if sys.version_info >= (3, 12):
    from importlib.metadata import EntryPoint, entry_points
else:  # the backport knows EntryPoint.dist on every supported Python
    from importlib_metadata import EntryPoint, entry_points

ENTRY_POINT_GROUP = "pruneframe.plugins"
FRAMEWORK_GROUP = "pruneframe.frameworks"
BUILTIN_DISTRIBUTION = "pruneframe"
ENV_ALLOW = "PRUNEFRAME_PLUGINS"
ENV_BLOCK = "PRUNEFRAME_DISABLE_PLUGINS"
ENV_STRICT = "PRUNEFRAME_STRICT_PLUGINS"

# (plugin name, builtin) of the plugin whose hook implementation is running
_registering: contextvars.ContextVar[tuple[str, bool]] = contextvars.ContextVar("pruneframe_registering",
                                                                               default=("<unattributed>", False))


def _env_names(var: str) -> set[str] | None:
    raw = os.environ.get(var, "").strip()
    return {n.strip() for n in raw.split(",") if n.strip()} if raw else None


def _strict() -> bool:
    return os.environ.get(ENV_STRICT, "") not in ("", "0", "false", "False")


def _report(name: str, dist_name: str, what: str, exc: BaseException) -> PluginFailure:
    """A plugin failed: an error under PRUNEFRAME_STRICT_PLUGINS, else a warning naming it; the others keep working."""
    message = f'Error {what} plugin "{name}" from distribution "{dist_name}": {type(exc).__name__}: {exc}'
    if _strict():
        raise PluginLoadError(message) from exc
    warnings.warn(
        f"{message}. It is skipped; the other plugins keep working. "
        f"Set {ENV_BLOCK}={name} to silence this, or {ENV_STRICT}=1 to make it an error.",
        PluginLoadWarning,
        stacklevel=5,
    )
    return PluginFailure(name, dist_name, what, f"{type(exc).__name__}: {exc}")


@attrs.define
class _Plugin:
    """One plugin found: where from, how to import it, and (once imported) the object pluggy registers."""

    name: str
    distribution: str
    version: str
    load: Callable[[], Any]
    frameworks: tuple[str, ...] = ()
    source: str = ""
    obj: Any = None

    @property
    def builtin(self) -> bool:
        return self.distribution == BUILTIN_DISTRIBUTION


def _distribution(ep: EntryPoint) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "<unknown>", "<unknown>"
    return dist.metadata["Name"] or "<unknown>", dist.version or "<unknown>"


def _found_plugins() -> list[_Plugin]:
    """Every entry-point plugin the environment selects, built-ins first; nothing is imported yet."""
    allow, block = _env_names(ENV_ALLOW), _env_names(ENV_BLOCK)
    frameworks: dict[tuple[str, str], tuple[str, ...]] = {}
    for ep in entry_points(group=FRAMEWORK_GROUP):
        frameworks[(_distribution(ep)[0], ep.name)] = tuple(v.strip() for v in ep.value.split(",") if v.strip())
    found: list[_Plugin] = []
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
                stacklevel=4,
            )
        seen.setdefault(ep.name, dist_name)
        found.append(_Plugin(name, dist_name, version, ep.load, frameworks.get((dist_name, ep.name), ()), ep.value))
    return sorted(found, key=lambda p: not p.builtin)  # stable: discovery order within each tier


def _frameworks_in_use(model: nn.Module | None) -> Callable[[str], bool]:
    """Whether a framework (a top-level module name) is imported, or provides a class of ``model``."""
    roots: set[str] = set()
    if isinstance(model, nn.Module):
        roots = {type(m).__module__.partition(".")[0] for m in model.modules()}
    return lambda framework: framework in sys.modules or framework in roots


def _run_as(fn: Callable[..., Any], name: str, builtin: bool, failed: dict[str, BaseException]) -> Callable[..., Any]:
    """``fn`` (a hook implementation) run with its plugin named as the one registering; what it raises is kept for the report."""

    @functools.wraps(fn)  # keeps pluggy's marker and the signature pluggy reads the argument names from
    def run(*args: Any, **kwargs: Any) -> Any:
        token = _registering.set((name, builtin))
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # reported by name once every hook ran; the plugin's registrations are dropped
            failed.setdefault(name, exc)
            return None
        finally:
            _registering.reset(token)

    return run


class _Attributed:
    """A plugin as pluggy sees it here: its hook implementations, each attributed to it (see ``_run_as``)."""

    def __init__(self, plugin: _Plugin, pm: pluggy.PluginManager, failed: dict[str, BaseException]):
        self._original = plugin.obj
        for attr in dir(plugin.obj):
            fn = getattr(plugin.obj, attr, None)
            opts = pm.parse_hookimpl_opts(plugin.obj, attr) if inspect.isroutine(fn) else None
            if opts is None:
                continue
            # a wrapper wraps the whole call: pluggy needs its generator function as it is
            wrapped = fn if opts.get("wrapper") or opts.get("hookwrapper") else _run_as(fn, plugin.name, plugin.builtin, failed)
            setattr(self, attr, wrapped)

    def __repr__(self) -> str:
        return repr(self._original)


def _checked_finder(find: Any) -> Finder | None:
    if find is not None and not callable(find):
        raise TypeError(f"find={find!r}: pass a function model -> the modules the registration serves")
    return find


class _Collector:
    """The ``register`` callbacks handed to the hooks; each entry names the plugin that made it."""

    def __init__(self) -> None:
        self.layers: list[LayerPrunerEntry] = []
        self.ops: list[OpHandlerEntry] = []
        self.hints: list[ModuleHookEntry] = []
        self.fixups: list[ModuleHookEntry] = []
        self.importances: list[ImportanceEntry] = []

    def register_layer(self, pruner: Any, module_types: Iterable[type] = (), *, name: str | None = None,
                       find: Finder | None = None) -> None:
        types = tuple(module_types)
        for t in types:
            if not isinstance(t, type):
                raise TypeError(f"{t!r} is not a class; register module types such as nn.Conv2d")
        self.layers.append(LayerPrunerEntry(pruner, types, name, *_registering.get(), find=_checked_finder(find)))

    def register_op(self, ops: Any, handler: Callable[..., None], *, name: str) -> None:
        if isinstance(ops, (torch._ops.OpOverloadPacket, torch._ops.OpOverload)):
            ops = [ops]  # one op given bare, not in a list
        elif callable(ops):
            self.ops.append(OpHandlerEntry((), ops, handler, name, *_registering.get()))
            return
        ops = list(ops)
        for op in ops:
            if not isinstance(op, (torch._ops.OpOverloadPacket, torch._ops.OpOverload)):
                raise TypeError(f"{op!r} is not an ATen op; register ops such as torch.ops.aten.cat or torch.ops.aten.cat.default")
        self.ops.append(OpHandlerEntry(tuple(ops), None, handler, name, *_registering.get()))

    def register_hint(self, module_types: Iterable[type], function: Callable[..., None], *, name: str,
                      find: Finder | None = None) -> None:
        self.hints.append(ModuleHookEntry(tuple(module_types), function, name, *_registering.get(), find=_checked_finder(find)))

    def register_fixup(self, module_types: Iterable[type], function: Callable[..., None], *, name: str,
                       find: Finder | None = None) -> None:
        self.fixups.append(ModuleHookEntry(tuple(module_types), function, name, *_registering.get(), find=_checked_finder(find)))

    def register_importance(self, name: str, factory: Callable[..., Any], *, aliases: Iterable[str] = ()) -> None:
        if isinstance(aliases, str):
            raise TypeError(f"aliases of importance {name!r} must be a list of names, not the string {aliases!r}")
        aliases = tuple(aliases)
        for given in (name, *aliases):
            if not isinstance(given, str) or not given:
                raise TypeError(f"importance names must be non-empty strings, not {given!r}")
        if not callable(factory):
            raise TypeError(f"the factory of importance {name!r} must be callable (an Importance class), not {factory!r}")
        self.importances.append(ImportanceEntry(name, factory, aliases, *_registering.get()))

    def without(self, plugins: set[str]) -> tuple[list, ...]:
        keep = lambda entries: [e for e in entries if e.plugin not in plugins]  # noqa: E731
        return keep(self.layers), keep(self.ops), keep(self.hints), keep(self.fixups), keep(self.importances)


class PluginSet:
    """The plugins of one registry: found, imported (now, or once their framework is in use) and collected."""

    def __init__(self, lazy: bool, extra_plugins: Iterable[tuple[str, Any]] = ()):
        self.loaded: list[_Plugin] = []
        self.deferred: list[_Plugin] = []
        self.failures: list[PluginFailure] = []
        self._registry: Registry | None = None
        for plugin in _found_plugins():
            if lazy and plugin.frameworks:
                self.deferred.append(plugin)
            else:
                self._import(plugin)
        for name, obj in extra_plugins:
            if any(p.obj is obj for p in self.loaded):
                continue  # already there (an in-process plugin that is installed too)
            self.loaded.append(_Plugin(name, "<in-process>", "", lambda: obj, obj=obj))

    def _import(self, plugin: _Plugin) -> None:
        try:
            plugin.obj = plugin.load()
        except Exception as exc:  # any import-time failure of a plugin is reported, by name
            self.failures.append(_report(plugin.name, plugin.distribution, f"importing ({plugin.source})", exc))
            return
        self.loaded.append(plugin)
        self.loaded.sort(key=lambda p: (not p.builtin, p.distribution == "<in-process>"))  # stable

    def registry(self, model: nn.Module | None = None) -> Registry:
        """The registry of every loaded plugin, after importing deferred ones whose framework ``model`` (or the process) uses."""
        if self.deferred:
            in_use = _frameworks_in_use(model)
            wanted = [p for p in self.deferred if any(in_use(f) for f in p.frameworks)]
            for plugin in wanted:
                self.deferred.remove(plugin)
                self._import(plugin)
                self._registry = None
        if self._registry is None:
            self._registry = self._collect()
        if isinstance(model, nn.Module):
            self._registry.discover(model)
        return self._registry

    def frameworks_served(self) -> set[str]:
        """The frameworks some found plugin (loaded or still deferred) declares in the ``pruneframe.frameworks`` group."""
        return {f for p in [*self.loaded, *self.deferred] for f in p.frameworks}

    def _collect(self) -> Registry:
        """Register the plugins with a fresh plugin manager, in a fixed order, and call every hook through its relay."""
        pm = pluggy.PluginManager("pruneframe")
        pm.add_hookspecs(hookspecs)
        failed: dict[str, BaseException] = {}
        registered: list[_Plugin] = []
        for plugin in self.loaded:
            try:
                pm.register(_Attributed(plugin, pm, failed), name=plugin.name)
            except pluggy.PluginValidationError as exc:
                self.failures.append(_report(plugin.name, plugin.distribution, "registering", exc))
                continue
            registered.append(plugin)
        pm.check_pending()  # a misspelt hook name is an error, not a silent no-op
        collector = _Collector()
        pm.hook.pruneframe_module_hints(register=collector.register_hint)
        pm.hook.pruneframe_fixups(register=collector.register_fixup)
        pm.hook.pruneframe_layer_pruners(register=collector.register_layer)
        pm.hook.pruneframe_op_handlers(register=collector.register_op)
        pm.hook.pruneframe_importances(register=collector.register_importance)
        infos = []
        for plugin in registered:
            if plugin.name in failed:
                self.failures.append(_report(plugin.name, plugin.distribution, "running the hooks of", failed[plugin.name]))
                continue
            hooks = tuple(sorted(h.name for h in pm.get_hookcallers(pm.get_plugin(plugin.name)) or ()))
            infos.append(PluginInfo(plugin.name, plugin.distribution, plugin.version,
                                    getattr(plugin.obj, "__name__", repr(plugin.obj)), hooks, plugin.builtin))
        failing = {p.name for p in registered if p.name in failed} | {p.name for p in self.loaded if p not in registered}
        self.loaded = [p for p in self.loaded if p.name not in failing]  # reported once; not called again
        return Registry(infos, *collector.without(failing), failures=self.failures)


def build_registry(extra_plugins: Iterable[tuple[str, Any]] = ()) -> Registry:
    """Load every entry-point plugin (and ``extra_plugins``) now, framework plugins included, and collect what they register.

    A plugin that fails to import, to register with pluggy, or inside one of
    its hooks is reported by name (see ``PRUNEFRAME_STRICT_PLUGINS``) and left
    out; a misspelt hook name is always an error.
    """
    return PluginSet(lazy=False, extra_plugins=extra_plugins).registry()


_lock = threading.Lock()
_process_plugins: PluginSet | None = None


def get_registry(model: nn.Module | None = None) -> Registry:
    """The process-wide registry, loaded on first use; framework plugins join once their framework is in use.

    With ``model``, a plugin for a framework one of its classes comes from is loaded too.
    """
    global _process_plugins
    with _lock:
        if _process_plugins is None:
            _process_plugins = PluginSet(lazy=True)
        return _process_plugins.registry(model)


def warn_missing_family_plugins(model: nn.Module) -> None:
    """Warn, naming the distribution to install, when ``model`` comes from a framework no installed plugin serves."""
    with _lock:
        served = _process_plugins.frameworks_served() if _process_plugins is not None else set()
    roots = {type(m).__module__.partition(".")[0] for m in model.modules()}
    for framework, distribution in missing_family_plugins(roots, served):
        warnings.warn(
            f"{type(model).__name__} is a {framework} model, and no installed plugin serves {framework}: sizes it keeps "
            f"outside the layers (config fields, head counts) will not follow the prune. Install {distribution} first "
            f"(pip install contrib/{distribution} in a pruneframe checkout).",
            MissingPluginWarning,
            stacklevel=3,
        )


def reload_plugins() -> Registry:
    """Forget the loaded plugins and load them again (after installing one, or changing the environment)."""
    global _process_plugins
    with _lock:
        _process_plugins = None
    return get_registry()
