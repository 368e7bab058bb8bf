"""``PruneApplier``: how a graph's groups are pruned — validated, applied as one transaction with the fix-ups, checked, recorded."""
from __future__ import annotations

import contextlib
import functools
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import attrs

import torch
from torch import nn

from .. import plan
from ..errors import ModelStopsRunningError, PruningError, UnloadableError
from ..runtime import return_freed_memory
from .dependency import PruneRecord, function_name
from .node import Node
from .transaction import Transaction

if TYPE_CHECKING:
    from .couplings import ChannelCoupling
    from .group import Group


@attrs.define
class _Applied:
    """A prune whose run check is deferred: enough to undo it."""

    transaction: Transaction
    touched: list[tuple[Any, torch.Tensor]]
    ids: torch.Tensor
    recorded_history: bool


def _stops_running(broken: str) -> ModelStopsRunningError:
    return ModelStopsRunningError(
        f"after this prune the model no longer runs on the example inputs, or slices them wrongly ({broken}); it was "
        "undone, the model is as it was. Its code fixes a size these channels change (a literal in a view, split or "
        "slice): keep these layers (ignored_layers) or make the code read the size from the tensor."
    )


def _unloadable(reasons: list[str]) -> UnloadableError:
    return UnloadableError(
        f"after this prune the model could no longer be saved in its own format ({'; '.join(reasons)}); it was "
        "undone, the model is as it was. Keep these layers, or prune without keep_loadable and save the pruning "
        "plan (pruneframe.state_dict) to load it."
    )


class PruneApplier:
    """Applies the groups of one traced model.

    ``still_runs(ids)`` answers whether the model still runs after a prune of
    channel ids ``ids`` (None, or why not); ``regroup(module, fn, idxs)`` draws a
    fresh group from the graph.
    """

    def __init__(self, model: nn.Module, fixups: list[tuple[nn.Module, Any]], coupling: "ChannelCoupling",
                 still_runs: Callable[[torch.Tensor], str | None], regroup: Callable[[Any, Any, Sequence[int]], "Group"]):
        self.model = model
        self.fixups = fixups
        self.coupling = coupling
        self.still_runs = still_runs
        self.regroup = regroup
        self.history: list[list[PruneRecord]] = []
        self._deferred: list[_Applied] | None = None

    @contextlib.contextmanager
    def one_run_check(self, keep_loadable: bool = False) -> Iterator[None]:
        """Prunes made inside are checked by one run of the model at the end instead of one run each.

        The fix-ups (sizes stored outside the layers, a config) also run once, at the end, from the final shapes:
        running them after every group cost a walk of the whole model per group.

        If the model no longer runs then, every prune made inside is undone
        (modules, graph and plan as before the block) and ``ModelStopsRunningError``
        is raised; prune them one at a time to find which one breaks it. The
        undo keeps each prune's original tensors until the block ends. An error
        raised inside undoes the block's prunes too. With ``keep_loadable`` the
        block is undone as well, raising ``UnloadableError``, when a fix-up
        returns why the model's own format cannot state the result; a nested
        ``keep_loadable`` block checks (and undoes) only its own prunes that way.
        """
        if self._deferred is not None:  # nested: the outer block runs the fix-ups and the run check
            if not keep_loadable:
                yield
                return
            start = len(self._deferred)
            yield
            unstatable = self._fixups_would_say()  # but what this block pruned must be statable on its own
            if unstatable:
                self._undo(self._deferred[start:])
                del self._deferred[start:]
                raise _unloadable(unstatable)
            return
        deferred: list[_Applied] = []
        self._deferred = deferred
        return_freed_memory()  # what scoring the groups let go of, before the prunes allocate theirs
        try:
            yield
        except BaseException:  # the block is all or nothing: what it pruned before the error is undone too
            self._undo(deferred)
            raise
        finally:
            self._deferred = None
        if deferred:
            return_freed_memory()  # what the block's prunes let go of, before a fix-up rebuilds a model to check a config
            fixed = Transaction([m for m, _ in self.fixups])  # the fix-ups run once for the block, from its final shapes
            try:
                unstatable = self._run_fixups(fixed)
            except BaseException:
                self._undo(deferred)
                raise
            if keep_loadable and unstatable:
                fixed.restore()
                self._undo(deferred)
                raise _unloadable(unstatable)
            broken = self.still_runs(torch.cat([a.ids for a in deferred]))
            if broken is not None:
                fixed.restore()
                self._undo(deferred)
                raise _stops_running(broken)

    def _fixups_would_say(self) -> list[str]:
        """What the fix-ups say of the model as it is now, their changes undone again (the outer block runs them for real)."""
        transaction = Transaction([m for m, _ in self.fixups])
        try:
            return self._run_fixups(transaction)
        finally:
            transaction.restore()

    def _run_fixups(self, transaction: Transaction) -> list[str]:
        """Run every fix-up; return what they said the model's own format cannot state (see ``pruneframe_fixups``)."""
        unstatable = []
        for module, entry in self.fixups:
            said = transaction.run(f"the fix-up {entry.name!r} of plugin {entry.plugin!r} on {type(module).__name__}",
                                   functools.partial(entry.function, module))
            if isinstance(said, str) and said:
                unstatable.append(said)
        return unstatable

    def _undo(self, applied: list[_Applied]) -> None:
        for a in reversed(applied):
            a.transaction.restore()
            for space, traced in a.touched:
                space.alive[traced] = True
            if a.recorded_history:
                self.history.pop()
            plan.forget_last(self.model)

    def apply(self, group: "Group", record_history: bool = True) -> None:
        """Prune every layer of ``group`` and run the fix-ups; on any failure restore every touched module and raise.

        Inference mode is off meanwhile: tensors made under it could not be trained afterwards, and they keep no
        version counter, which the transaction reads to catch a pruner writing in place.
        """
        with torch.inference_mode(False):
            self._apply(group, record_history)

    def _apply(self, group: "Group", record_history: bool) -> None:
        if not len(group) or not group.root_idxs:
            return
        problems = group.problems()
        if problems:
            raise PruningError(
                "refusing to prune this group; nothing was changed: " + "; ".join(problems)
                + ". Check it first with DependencyGraph.check_pruning_group, or pick other indices."
            )
        targets = [dep.target for dep, _ in group]
        check_still_there(self.model, targets)
        check_unchanged(targets)
        deferred = self._deferred is not None  # inside one_run_check the block runs the fix-ups once, at its end
        transaction = Transaction([n.module for n in targets if isinstance(n.module, nn.Module)]
                                  + ([] if deferred else [m for m, _ in self.fixups]),
                                  [n.module for n in targets if isinstance(n.module, torch.Tensor)])
        for dep, idxs in group:
            transaction.run(f"pruning {dep.target.name} ({dep.target.type}) with {function_name(dep.handler)} "
                            f"of plugin {dep.target.plugin!r}", functools.partial(dep, idxs),
                            dep.target.module if isinstance(dep.target.module, nn.Module) else None)
        if not deferred:
            self._run_fixups(transaction)
        touched = group.touched
        ids = torch.cat([space.base + traced for space, traced in touched])
        if self._deferred is None:
            broken = self.still_runs(ids)
            if broken is not None:
                transaction.fail(_stops_running(broken))
        else:
            self._deferred.append(_Applied(transaction, touched, ids, record_history))
        records = []
        for space, traced in touched:
            records.append(PruneRecord(space.node.name, space.kind, tuple(space.current_positions(traced).tolist()),
                                       tuple(traced.tolist())))
            space.alive[traced] = False
        if record_history:
            self.history.append(records)
        plan.record(self.model, [plan.entry_of(dep.target, dep.kind, idxs) for dep, idxs in group])


def check_still_there(model: nn.Module, nodes: list[Node]) -> None:
    """Refuse to prune a layer that is no longer where the graph found it (its block was removed or moved since)."""
    for node in nodes:
        if node.kind != "layer" or not isinstance(node.module, nn.Module):
            continue
        try:
            found = model.get_submodule("" if node.name == "(model)" else node.name)
        except AttributeError:
            found = None
        if found is not node.module:
            raise PruningError(f"{node.name} ({node.type}) is no longer at that place in the model (layers were removed or "
                               "moved since this graph was built, e.g. by remove_layers): build the graph again "
                               "(DependencyGraph().build_dependency, or a new MetaPruner). Nothing was changed.")


def check_unchanged(nodes: list[Node]) -> None:
    """Refuse to prune from a graph whose model was changed behind its back."""
    for node in nodes:
        space = node.out_space
        if space is None:
            continue
        if node.kind == "parameter":
            actual = node.module.shape[node.pruning_dim]
        else:
            try:
                actual = node.pruner.get_out_channels(node.module)
            except Exception:  # a user's get_out_channels may be wrong; the trace counts are authoritative
                continue
        if isinstance(actual, int) and space.size and actual != space.current_size:
            raise PruningError(
                f"{node.name} ({node.type}) has {actual} output channels but the graph expects {space.current_size}: "
                "the model was changed outside this graph. Call build_dependency again."
            )
