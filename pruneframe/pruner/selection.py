"""Choosing which blocks of channels go: per group (local), or ranked across groups (global, isomorphic, ratio dicts).

A ``Candidate`` is one group of one step: its root layer's prunable channels
(traced positions), the block each belongs to (channels that can only go
together), and a score per block. Selection takes the lowest-scoring blocks
until the root, or the scope, reaches the step's target.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import attrs
import torch

from ..graph.components import connected_components


@attrs.define(eq=False)
class Candidate:
    """One group of one step: its root layer, its blocks and their scores."""

    root: Any
    trigger: Callable[..., Any]
    space: Any  # the root layer's channel Space
    traced: torch.Tensor  # traced positions of the root's prunable channels
    labels: torch.Tensor  # the block of each of them, numbered from 0
    sizes: list[int]  # channels per block
    scores: torch.Tensor  # one per block
    original: int  # the root layer's channels before the first step
    ratio: float  # this step's target ratio for the root layer
    scope: str


@attrs.frozen
class Limits:
    """What every root keeps whatever the ranking: ``max_pruning_ratio`` of its width, a multiple of ``round_to``."""

    max_pruning_ratio: float
    round_to: int | None

    def floor(self, c: Candidate) -> int:
        return max(math.ceil(c.original * (1 - self.max_pruning_ratio)), 1)

    def target_cut(self, c: Candidate) -> int:
        """How many of the root's current channels must go for it to reach this step's ratio (rounded)."""
        keep = max(c.original - int(c.original * c.ratio), self.floor(c))
        if self.round_to:
            keep = max(self.round_to, keep - keep % self.round_to)  # below round_to: round_to itself
        return max(c.space.current_size - keep, 0)


def select(c: Candidate, want: int) -> torch.Tensor:
    """The traced positions of the lowest-scoring blocks of ``c`` whose sizes add up to at most ``want``."""
    taken = torch.zeros(len(c.sizes), dtype=torch.bool)
    total = 0
    for b in torch.argsort(c.scores, stable=True).tolist():
        size = c.sizes[b]
        if total + size > want:
            continue
        taken[b] = True
        total += size
    return c.traced[taken[c.labels]]


def choose_ranked(members: list[Candidate], limits: Limits) -> list[tuple[Candidate, torch.Tensor]]:
    """Rank the blocks of several groups together; each root still keeps its max_pruning_ratio and one block."""
    want = sum(limits.target_cut(c) for c in members)
    entries = [(float(score), k, b) for k, c in enumerate(members) for b, score in enumerate(c.scores.tolist())]
    entries.sort(key=lambda e: e[0])
    cut = [0] * len(members)
    limit = [max(c.space.current_size - limits.floor(c), 0) for c in members]
    total = 0
    for _, k, b in entries:
        if total >= want:
            break
        size = members[k].sizes[b]
        if total + size > want or cut[k] + size > limit[k]:
            continue
        cut[k] += size
        total += size
    result = []
    for k, c in enumerate(members):
        count = cut[k]
        if limits.round_to and count:  # the kept width becomes a multiple of round_to
            keep = c.space.current_size - count
            extra = keep % limits.round_to
            if extra:
                if keep > limits.round_to and count + extra <= limit[k]:
                    count += extra  # round the kept width down
                else:  # too few left, or the cap: round it up instead (prune less)
                    count = max(count - (limits.round_to - extra), 0)
        result.append((c, select(c, count)))
    return result


def join_blocks(labels: torch.Tensor, keys: list[torch.Tensor]) -> torch.Tensor:
    """Blocks of ``labels`` joined wherever two root indices share a key of ``keys`` (-1 shares nothing), renumbered from 0."""
    n = labels.numel()
    edges = []
    for key in [labels, *keys]:
        order = torch.argsort(key, stable=True)
        same = (key[order][1:] == key[order][:-1]) & (key[order][1:] >= 0)
        edges.append(torch.stack([order[:-1][same], order[1:][same]]))
    return torch.unique(connected_components(n, torch.cat(edges, 1)), return_inverse=True)[1]
