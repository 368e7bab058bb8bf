"""Dependencies and groups: what must be pruned together, and pruning it as one transaction."""
from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Callable, Iterator, NamedTuple, Sequence

import attrs
import torch
from torch import nn

from . import plan
from .errors import ModelStopsRunningError, PruningError
from .node import Node, Space

if TYPE_CHECKING:
    from .graph import DependencyGraph


def function_name(fn: Callable[..., Any]) -> str:
    """A pruning function's name, for tables and errors."""
    if isinstance(fn, functools.partial):
        return function_name(fn.func)
    return getattr(fn, "__name__", type(fn).__name__)


@attrs.frozen(repr=False)
class IndexMapping:
    """Maps channel indices of the source space to the indices they force out of the target space."""

    graph: "DependencyGraph"
    source: Space
    target: Space

    def __call__(self, idxs: Sequence[int]) -> list[int]:
        return self.graph._map_indices(self.source, self.target, idxs)

    def __repr__(self) -> str:
        return f"IndexMapping({self.source!r} -> {self.target!r})"


@attrs.frozen(repr=False)
class Dependency:
    """When ``trigger`` runs on ``source``, ``handler`` must run on ``target``.

    ``index_mapping`` turns the trigger's indices into the handler's.
    """

    trigger: Callable[..., Any]
    handler: Callable[..., Any]
    source: Node
    target: Node
    index_mapping: IndexMapping

    @property
    def layer(self) -> Any:
        return self.target.module

    @property
    def pruning_fn(self) -> Callable[..., Any]:
        return self.handler

    def __call__(self, idxs: Sequence[int]) -> Any:
        return self.handler(self.target.module, list(idxs))

    def __repr__(self) -> str:
        return (
            f"[{self.source.name} ({self.source.type})] {function_name(self.trigger)} => "
            f"[{self.target.name} ({self.target.type})] {function_name(self.handler)}"
        )


class GroupItem(NamedTuple):
    dep: Dependency
    idxs: list[int]


@attrs.frozen
class PruneRecord:
    """One layer's part of a prune, as it happened: current indices and traced positions."""

    name: str
    kind: str  # "out" or "in"
    idxs: tuple[int, ...]
    traced: tuple[int, ...]


class Group:
    """Every (dependency, indices) that must be pruned together.

    Iterate it for ``(dep, idxs)`` pairs; ``prune()`` (or ``exec()``) removes
    them all or, if anything fails, nothing.
    """

    def __init__(
        self,
        graph: "DependencyGraph",
        items: list[GroupItem],
        members: list[tuple[Space, torch.Tensor]],
        blocked: list[str],
        root_idxs: list[int],
    ):
        self._graph = graph
        self._items = items
        self._members = members  # every space touched, with traced positions (coupled inputs too)
        self.blocked_reasons = blocked
        self.root_idxs = root_idxs

    @property
    def items(self) -> list[GroupItem]:
        return list(self._items)

    def __iter__(self) -> Iterator[GroupItem]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, k: int) -> GroupItem:
        return self._items[k]

    def root_blocks(self) -> list[list[int]]:
        """The root indices partitioned into blocks that can only be pruned whole (coupled inside the root layer)."""
        if not self._items:
            return []
        root = self._items[0].dep
        return self._graph._root_blocks(root.target, root.trigger, self.root_idxs)

    def has_dep(self, dep: Dependency) -> bool:
        return any(item.dep is dep for item in self._items)

    def has_pruning_op(self, dep: Dependency, idxs: Sequence[int]) -> bool:
        return any(item.dep.target is dep.target and function_name(item.dep.handler) == function_name(dep.handler)
                   and set(item.idxs) >= set(idxs) for item in self._items)

    # --- pruning ------------------------------------------------------------------
    def problems(self) -> list[str]:
        """Why this group cannot be pruned (empty when it can)."""
        found = [f"channels are not prunable: {r}" for r in self.blocked_reasons]
        for space, traced in self._members:
            if traced.numel() and traced.numel() >= space.current_size:
                found.append(f"it would remove all {space.current_size} {space.kind}put channels of {space.node.name} ({space.node.type})")
        if not found:
            for dep, idxs in self._items:
                node = dep.target
                check = getattr(node.pruner, "check_prune", None)
                if node.kind == "layer" and check is not None:
                    kind = "in" if "in_channels" in function_name(dep.handler) else "out"
                    problem = check(node.module, kind, idxs)
                    if problem:
                        found.append(f"{node.name} ({node.type}): {problem}")
        return found

    def prune(self, idxs: Sequence[int] | None = None, record_history: bool = True) -> None:
        """Prune every layer of the group; on any failure restore every touched module and raise.

        With ``idxs``, prune those indices of the root layer instead (the group is re-derived).
        """
        if idxs is not None:
            root = self._items[0].dep
            self._graph.get_pruning_group(root.target.module, root.trigger, idxs).prune(record_history=record_history)
            return
        if not self._items or not self.root_idxs:
            return
        problems = self.problems()
        if problems:
            raise PruningError(
                "refusing to prune this group; nothing was changed: " + "; ".join(problems)
                + ". Check it first with DependencyGraph.check_pruning_group, or pick other indices."
            )
        self._graph._check_unchanged([item.dep.target for item in self._items])
        fixups = self._graph._fixups
        snapshot = _Snapshot([item.dep.target for item in self._items], [module for module, _ in fixups])
        steps = [(f"pruning {item.dep.target.name} ({item.dep.target.type}) with {function_name(item.dep.handler)} "
                  f"of plugin {item.dep.target.plugin!r}", functools.partial(item.dep, item.idxs)) for item in self._items]
        steps += [(f"the fix-up {entry.name!r} of plugin {entry.plugin!r} on {type(module).__name__}",
                   functools.partial(entry.function, module)) for module, entry in fixups]
        for what, step in steps:
            try:
                step()
            except Exception as exc:
                snapshot.restore()
                raise PruningError(
                    f"{what} failed: {type(exc).__name__}: {exc}. Every touched module was restored; the model is as it was."
                ) from exc
            written = snapshot.written_in_place()
            if written:
                snapshot.restore()
                raise PruningError(
                    f"{what} wrote in place into {', '.join(written)}: pruners must replace tensors (see "
                    "pruneframe.layer_pruner.select_), never modify them, or no failed prune can be undone. Shapes and "
                    "attributes were restored, but the values it overwrote cannot be; fix the pruner."
                )
        broken = self._graph._still_runs(torch.cat([space.base + traced for space, traced in self._members]))
        if broken is not None:
            snapshot.restore()
            raise ModelStopsRunningError(
                f"after this prune the model no longer runs on the example inputs ({broken}); it was undone, the model "
                "is as it was. Its code fixes a size these channels change (a literal in a view or split): keep these "
                "layers (ignored_layers) or make the code read the size from the tensor."
            )
        records = []
        for space, traced in self._members:
            records.append(PruneRecord(space.node.name, space.kind, tuple(space.current_positions(traced).tolist()), tuple(traced.tolist())))
            space.alive[traced] = False
        if record_history:
            self._graph._history.append(records)
        if self._graph.model is not None:
            plan.record(self._graph.model, plan.steps_of(
                (dep.target, "in" if "in_channels" in function_name(dep.handler) else "out", idxs) for dep, idxs in self._items))

    exec = prune

    def __call__(self) -> None:
        self.prune()

    # --- reading --------------------------------------------------------------------
    def details(self) -> str:
        return self._table(full=True)

    def __str__(self) -> str:
        return self._table(full=False)

    __repr__ = __str__

    def _table(self, full: bool) -> str:
        rows = []
        for k, (dep, idxs) in enumerate(self._items):
            shown = str(idxs) if full or len(idxs) <= 8 else f"{idxs[:8]}... ({len(idxs)})"
            rows.append((str(k), dep.target.name, dep.target.type, function_name(dep.handler), str(len(idxs)), shown))
        head = ("#", "layer", "type", "pruning function", "n", "indices")
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
        line = "+".join("-" * (w + 2) for w in widths)
        fmt = lambda r: " " + " | ".join(c.ljust(w) for c, w in zip(r, widths))  # noqa: E731
        title = f"Pruning group: {len(self._items)} dependencies, {len(self.root_idxs)} root indices"
        if self.blocked_reasons:
            title += " (NOT PRUNABLE: " + "; ".join(self.blocked_reasons) + ")"
        return "\n".join([title, line, fmt(head), line, *(fmt(r) for r in rows), line])


class _Snapshot:
    """Everything a prune can change in the touched modules, to put back if it fails."""

    def __init__(self, nodes: list[Node], extra_modules: list[nn.Module] = ()):
        modules: dict[int, nn.Module] = {id(m): m for m in extra_modules}
        tensors: dict[int, torch.Tensor] = {}
        for node in nodes:
            if isinstance(node.module, nn.Module):
                for m in node.module.modules():
                    modules[id(m)] = m
                    for t in list(m._parameters.values()) + list(m._buffers.values()):
                        if t is not None:
                            tensors[id(t)] = t
            elif isinstance(node.module, torch.Tensor):
                tensors[id(node.module)] = node.module
        self.modules = [
            (m, dict(m.__dict__), dict(m._parameters), dict(m._buffers), dict(m._modules)) for m in modules.values()
        ]
        self.tensors = [(t, t.detach(), t._version, t.grad) for t in tensors.values()]

    def restore(self) -> None:
        for m, attrs_, params, buffers, children in self.modules:
            m.__dict__.clear()
            m.__dict__.update(attrs_)
            for container, saved in ((m._parameters, params), (m._buffers, buffers), (m._modules, children)):
                container.clear()
                container.update(saved)
        for t, data, _, grad in self.tensors:
            t.data = data
            t.grad = grad

    def written_in_place(self) -> list[str]:
        """The original tensors someone wrote into (their version counter moved)."""
        return [f"a tensor of shape {tuple(data.shape)}" for t, data, version, _ in self.tensors if data._version != version]
