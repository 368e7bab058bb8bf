"""``Group``: every (dependency, indices) that must be pruned together, and its members as public records."""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterator, Sequence

import torch

from .dependency import Dependency, GroupItem, Member, function_name
from .node import Node, Space

if TYPE_CHECKING:
    from .apply import PruneApplier
    from .couplings import ChannelCoupling

STALE = "the group is older than a prune, so its indices no longer name the same channels. Get it again from the graph."


class Group:
    """Every (dependency, indices) that must be pruned together.

    Iterate it for ``(dep, idxs)`` pairs; ``prune()`` (or ``exec()``) removes
    them all or, if anything fails, nothing. ``members()`` says, per layer,
    which root index each of its channels belongs to.
    """

    def __init__(self, items: list[GroupItem], touched: list[tuple[Space, torch.Tensor]], blocked: list[str],
                 root_idxs: list[int], coupling: "ChannelCoupling", applier: "PruneApplier"):
        self._items = items
        self._touched = touched  # every space that loses channels, with traced positions (coupled inputs too)
        self.blocked_reasons = blocked
        self.root_idxs = root_idxs
        self._coupling = coupling
        self._applier = applier
        self._members: list[Member] | None = None
        self._traced = {id(space): traced for space, traced in touched}

    @property
    def items(self) -> list[GroupItem]:
        return list(self._items)

    def __iter__(self) -> Iterator[GroupItem]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, k: int) -> GroupItem:
        return self._items[k]

    @property
    def root(self) -> Node | None:
        """The node the group was asked for (its first dependency's target)."""
        return self._items[0].dep.target if self._items else None

    @property
    def root_space(self) -> Space | None:
        """The channel space of the root whose indices ``root_idxs`` are."""
        return self._items[0].dep.index_mapping.source if self._items else None

    @property
    def touched(self) -> list[tuple[Space, torch.Tensor]]:
        """Every channel space the prune shrinks (inputs of in/out-coupled layers too), with traced positions."""
        return list(self._touched)

    def root_blocks(self) -> list[list[int]]:
        """The root indices partitioned into blocks that can only be pruned whole (coupled inside the root layer)."""
        labels = self.root_block_labels()
        if not labels.numel():
            return []
        order = torch.argsort(labels, stable=True)
        idxs = torch.as_tensor(self.root_idxs, dtype=torch.long)[order]
        return [block.tolist() for block in torch.split(idxs, torch.bincount(labels).tolist())]

    def root_block_labels(self) -> torch.Tensor:
        """For each root index, the number of its block (``0..blocks-1``): indices coupled inside the root go whole."""
        if not self._items:
            return torch.empty(0, dtype=torch.long)
        roots = self._coupling.roots(self.root_space, torch.as_tensor(self.root_idxs, dtype=torch.long))
        return torch.unique(roots, return_inverse=True)[1]

    def _traced_of(self, dep: Dependency) -> torch.Tensor:
        return self._traced[id(dep.index_mapping.target)]

    def members(self) -> list[Member]:
        """One ``Member`` per dependency, in group order: the channels it loses and the root index of each.

        Raises ``ValueError`` for a group that a later prune made stale.
        """
        if not self._items:
            return []
        for dep, idxs in self._items:
            space = dep.index_mapping.target
            traced = self._traced_of(dep)
            if not bool(space.alive[traced].all()) or space.current_positions(traced).tolist() != list(idxs):
                raise ValueError(f"{dep.target.name}: {STALE}")
        if self._members is None:
            root_labels = self._coupling.roots(self.root_space, torch.as_tensor(self.root_idxs, dtype=torch.long))
            block_labels, root_block = torch.unique(root_labels, return_inverse=True)
            members = []
            for dep, idxs in self._items:
                space = dep.index_mapping.target
                index = torch.as_tensor(list(idxs), dtype=torch.long)
                labels = self._coupling.roots(space, index)
                block = torch.searchsorted(block_labels, labels).clamp(max=max(block_labels.numel() - 1, 0))
                unmatched = block_labels[block] != labels if block_labels.numel() else torch.ones_like(labels, dtype=torch.bool)
                if bool(unmatched.any()):
                    raise ValueError(f"channels {index[unmatched].tolist()} of {dep.target.name} are tied to none of the "
                                     f"group's root indices: {STALE}")
                members.append(Member(dep.target, space, index, block, root_block, block_labels.numel()))
            self._members = members
        return list(self._members)

    def has_dep(self, dep: Dependency) -> bool:
        return any(item.dep is dep for item in self._items)

    def has_pruning_op(self, dep: Dependency, idxs: Sequence[int]) -> bool:
        return any(item.dep.target is dep.target and item.dep.kind == dep.kind and set(item.idxs) >= set(idxs)
                   for item in self._items)

    # --- pruning ------------------------------------------------------------------
    def problems(self) -> list[str]:
        """Why this group cannot be pruned (empty when it can)."""
        found = [f"channels are not prunable: {r}" for r in self.blocked_reasons]
        for space, traced in self._touched:
            if traced.numel() and traced.numel() >= space.current_size:
                found.append(f"it would remove all {space.current_size} {space.kind}put channels of {space.node.name} ({space.node.type})")
        if not found:
            for dep, idxs in self._items:
                node = dep.target
                check = getattr(node.pruner, "check_prune", None)
                if node.kind == "layer" and check is not None:
                    problem = check(node.module, dep.kind, idxs)
                    if problem:
                        found.append(f"{node.name} ({node.type}): {problem}")
        return found

    def prune(self, idxs: Sequence[int] | None = None, record_history: bool = True) -> None:
        """Prune every layer of the group; on any failure restore every touched module and raise.

        With ``idxs``, prune those indices of the root layer instead (the group is re-derived).
        """
        if idxs is not None:
            root = self._items[0].dep
            self._applier.regroup(root.target.module, root.trigger, idxs).prune(record_history=record_history)
            return
        self._applier.apply(self, record_history)

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


__all__ = ["Group", "STALE"]
