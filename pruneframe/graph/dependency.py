"""The records a group is made of: dependencies with their index mappings, members, and what a prune removed."""
from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Sequence

import attrs
import torch

from .node import Node, Space

if TYPE_CHECKING:
    from .couplings import ChannelCoupling


def function_name(fn: Callable[..., Any]) -> str:
    """A pruning function's name, for tables and errors."""
    if isinstance(fn, functools.partial):
        return function_name(fn.func)
    return getattr(fn, "__name__", type(fn).__name__)


@attrs.frozen(repr=False)
class IndexMapping:
    """Maps channel indices of the source space to the indices they force out of the target space."""

    coupling: "ChannelCoupling"
    source: Space
    target: Space

    def __call__(self, idxs: Sequence[int]) -> list[int]:
        return self.coupling.map_indices(self.source, self.target, idxs)

    def __repr__(self) -> str:
        return f"IndexMapping({self.source!r} -> {self.target!r})"


@attrs.frozen(repr=False)
class Dependency:
    """When ``trigger`` runs on ``source``, ``handler`` must run on ``target``.

    ``kind`` says which channels of the target the handler removes ("out" or
    "in"); ``index_mapping`` turns the trigger's indices into the handler's.
    """

    trigger: Callable[..., Any]
    handler: Callable[..., Any]
    source: Node
    target: Node
    index_mapping: IndexMapping
    kind: str = attrs.field(validator=attrs.validators.in_(("out", "in")))

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


@attrs.frozen(eq=False)
class Member:
    """One layer's share of a group, as importance criteria and pruners read it.

    Channel ``idxs[member_pos[k]]`` of ``node``'s ``space`` (current indices,
    sorted) goes when root index ``root_idxs[root_pos[k]]`` of the group does;
    a channel several root indices remove (through a ``flatten``) appears once
    per root index.
    """

    node: Node
    space: Space
    idxs: torch.Tensor
    member_pos: torch.Tensor
    root_pos: torch.Tensor

    @property
    def kind(self) -> str:
        return self.space.kind

    @property
    def layer(self) -> Any:
        return self.node.module


@attrs.frozen
class PruneRecord:
    """One layer's part of a prune, as it happened: current indices and traced positions."""

    name: str
    kind: str  # "out" or "in"
    idxs: tuple[int, ...]
    traced: tuple[int, ...]
