"""The hooks a pruneframe plugin may implement.

A plugin is a module (or object) with ``@pruneframe.hookimpl`` functions, made
known through the ``pruneframe.plugins`` entry-point group. Every hook receives a
``register`` callback and returns nothing; pruneframe remembers which plugin
registered what, so errors and ``pruneframe plugins`` can name it.

Hooks are called through pluggy's hook relay, so ``@hookimpl(tryfirst=True)``,
``trylast=True`` and wrappers mean what pluggy documents. The order in which
implementations run is the order of precedence: when two plugins register a
pruner for one layer type (or an importance under one name), the one whose hook
ran first wins. Built-in plugins are ``trylast`` and registered before any
other, so an ordinary third-party plugin outranks them, ``tryfirst`` outranks
both, and a third-party ``trylast`` implementation is a fallback below them. A layer registered on
one ``DependencyGraph`` with ``register_customized_layer`` outranks every plugin.
Op handlers keep one more rule: any third-party registration (an overload, a
whole op, a predicate) is consulted before the built-ins'.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Protocol, Union

import pluggy

hookspec = pluggy.HookspecMarker("pruneframe")
hookimpl = pluggy.HookimplMarker("pruneframe")


class RegisterLayerPruner(Protocol):
    def __call__(self, pruner: Any, module_types: Iterable[type] = (), *, name: str | None = None,
                 find: Callable[[Any], Iterable[Any]] | None = None) -> None: ...


class RegisterOpHandler(Protocol):
    def __call__(self, ops: Union[Iterable[Any], Callable[[Any], bool]], handler: Callable[..., None], *, name: str) -> None: ...


@hookspec
def pruneframe_layer_pruners(register: RegisterLayerPruner) -> None:
    """Register layer pruners: how a layer type loses output and input channels.

    Called once, when plugins are loaded. Call ``register(pruner, module_types,
    name=...)`` for each pruner, where ``pruner`` is a
    ``pruneframe.LayerPruner`` instance and ``module_types`` the ``nn.Module``
    classes it serves (subclasses are served too: lookup follows the MRO, most
    specific class first). ``name`` makes the functional names
    ``prune_<name>_out_channels`` and ``prune_<name>_in_channels`` available as
    ``pruneframe.prune_<name>_out_channels``; ``module_types`` may be empty for a
    pruner that only provides such names.

    ``find(model) -> modules`` serves classes no plugin can list up front (a
    family's own experts class, found by its tensors): when a graph is built
    or a plan replayed on ``model``, the class of every module ``find``
    returns is served by ``pruner`` from then on (classes registered by type
    keep their pruner). The hint and fix-up ``register`` take the same ``find``.
    A pruner may also say ``inner_channels(layer)`` (a width no tensor shows,
    pruned as its output channels) and ``parameter_spaces(layer)`` (its tensors'
    dimensions pruned as raw parameters, tied to others by ``hints.couple``).
    """


@hookspec
def pruneframe_op_handlers(register: RegisterOpHandler) -> None:
    """Register handlers that tell the tracer how an ATen op moves channels.

    Called once, when plugins are loaded. ``ops`` is either an iterable of ATen
    ops (``torch.ops.aten.cat`` — every overload — or one overload such as
    ``torch.ops.aten.cat.default``) or a predicate ``op -> bool`` consulted when
    no exact registration matches. ``handler(ctx, op, args, kwargs, out)`` is
    called after the op ran during the trace; it reads input labels through
    ``ctx`` (a ``pruneframe.tracing.OpContext``) and sets the labels of ``out``.
    An op no handler claims blocks pruning across it.
    """


class RegisterModuleHint(Protocol):
    def __call__(self, module_types: Iterable[type], hint: Callable[[Any, Any], None], *, name: str,
                 find: Callable[[Any], Iterable[Any]] | None = None) -> None: ...


class RegisterFixup(Protocol):
    def __call__(self, module_types: Iterable[type], fixup: Callable[[Any], str | None], *, name: str,
                 find: Callable[[Any], Iterable[Any]] | None = None) -> None: ...


@hookspec
def pruneframe_module_hints(register: RegisterModuleHint) -> None:
    """Register hints: what a module's *code* fixes, which no trace can see.

    Called once, when plugins are loaded. ``register(module_types, hint,
    name=...)``: while ``build_dependency`` runs, ``hint(module, hints)`` is
    called for every module of those types in the model, and may call
    ``hints.keep_out_channels(layer, reason)`` / ``hints.keep_in_channels(layer,
    reason)`` for sub-layers whose widths the module's code hard-codes (for
    example an attention block that reshapes with a stored head width), and
    ``hints.couple(layer_a, kind_a, layer_b, kind_b, reason)`` for channels of
    two layers that go together although no tensor shows it (a router's rows
    and the expert dimension of fused expert weights).
    """


@hookspec
def pruneframe_fixups(register: RegisterFixup) -> None:
    """Register fix-ups: attributes to update after a prune (e.g. a stored hidden size).

    Called once, when plugins are loaded. ``register(module_types, fixup,
    name=...)``: after every group a graph prunes, ``fixup(module)`` runs for
    each module of those types in its model, inside the prune's transaction (if
    it raises, the prune is undone).

    A fix-up returns None, or a string saying why the module's own save format
    cannot state the pruned sizes even if every layer were pruned alike (a
    config that derives the head width from the hidden size). Prunes made with
    ``keep_loadable`` (``MetaPruner``'s default) are then undone and their
    groups left whole; otherwise the string is ignored. Sizes that differ only
    layer by layer are not such a reason.
    """


class RegisterImportance(Protocol):
    def __call__(self, name: str, factory: Callable[..., Any], *, aliases: Iterable[str] = ()) -> None: ...


@hookspec
def pruneframe_importances(register: RegisterImportance) -> None:
    """Register importance criteria by name: what ranks channels for pruning.

    Called once, when plugins are loaded. ``register(name, factory,
    aliases=...)`` makes ``factory`` (a ``pruneframe.importance.Importance``
    subclass, or any callable returning a criterion) available as
    ``registry.importance(name)`` and ``pruneframe.importance.from_name(name,
    **kwargs)``, under ``name`` and each of ``aliases``. A criterion is called
    on a ``pruneframe.Group`` and returns one score per root index of the
    group. When two plugins register one name, a third-party plugin's wins
    over a built-in's.
    """
