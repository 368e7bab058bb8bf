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

    The group's root indices fall into blocks that go together (one block per
    root index unless the trace ties several, as in a head). Channel
    ``idxs[m]`` of ``node``'s ``space`` (current indices, sorted) belongs to
    block ``member_block[m]``, root index ``root_idxs[r]`` to ``root_block[r]``;
    the channel goes when any root index of its block does. ``to_roots`` and
    ``from_roots`` move values between the two sides in O(channels + roots);
    ``member_pos`` / ``root_pos`` list every (channel, root index) pair, which
    for wide tied blocks is quadratic.
    """

    node: Node
    space: Space
    idxs: torch.Tensor
    member_block: torch.Tensor
    root_block: torch.Tensor
    blocks: int

    @property
    def kind(self) -> str:
        return self.space.kind

    @property
    def layer(self) -> Any:
        return self.node.module

    def to_roots(self, values: torch.Tensor) -> torch.Tensor:
        """Per root index, the sum of ``values`` (one per channel) over the channels of its block."""
        block = self.member_block.to(values.device)
        sums = torch.zeros((self.blocks, *values.shape[1:]), dtype=values.dtype, device=values.device).index_add_(0, block, values)
        return sums[self.root_block.to(values.device)]

    def covered_roots(self) -> torch.Tensor:
        """Per root index, whether this layer has a channel in its block."""
        return (torch.bincount(self.member_block, minlength=self.blocks) > 0)[self.root_block]

    def from_roots(self, values: torch.Tensor, mean: bool = False) -> torch.Tensor:
        """Per channel, the sum (or ``mean``) of ``values`` (one per root index) over the root indices of its block."""
        block = self.root_block.to(values.device)
        sums = torch.zeros((self.blocks, *values.shape[1:]), dtype=values.dtype, device=values.device).index_add_(0, block, values)
        if mean:
            counts = torch.bincount(self.root_block, minlength=self.blocks).clamp(min=1).to(values.device, values.dtype)
            sums = sums / counts.reshape(-1, *[1] * (values.dim() - 1))
        return sums[self.member_block.to(values.device)]

    def first_channel_per_root(self) -> torch.Tensor:
        """Per root index, the position in ``idxs`` of the first channel of its block (-1 where there is none)."""
        m = self.member_block.numel()
        first = torch.full((self.blocks,), m, dtype=torch.long).scatter_reduce_(0, self.member_block, torch.arange(m), "amin")
        return torch.where(first < m, first, torch.full_like(first, -1))[self.root_block]

    @property
    def member_pos(self) -> torch.Tensor:
        """Every pair's channel position (pairs ordered by channel, then root index)."""
        return self._pairs()[0]

    @property
    def root_pos(self) -> torch.Tensor:
        """Every pair's root position (see ``member_pos``)."""
        return self._pairs()[1]

    def _pairs(self) -> tuple[torch.Tensor, torch.Tensor]:
        order = torch.argsort(self.root_block, stable=True)
        per_block = torch.bincount(self.root_block, minlength=self.blocks)
        start = torch.cumsum(per_block, 0) - per_block
        counts = per_block[self.member_block]
        member_pos = torch.repeat_interleave(torch.arange(self.member_block.numel()), counts)
        within = torch.arange(int(counts.sum())) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
        return member_pos, order[torch.repeat_interleave(start[self.member_block], counts) + within]


@attrs.frozen
class PruneRecord:
    """One layer's part of a prune, as it happened: current indices and traced positions."""

    name: str
    kind: str  # "out" or "in"
    idxs: tuple[int, ...]
    traced: tuple[int, ...]
