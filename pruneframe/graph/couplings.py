"""``ChannelCoupling``: which traced channels are pruned together, and which must never shrink, and why.

Built once per trace from the tracer's couplings, the couplings module hints
add, and the reasons to keep channels (model inputs and outputs, unknown ops,
ignored layers, module hints). Everything a group needs — its members, the reasons it is blocked,
index mappings between two layers, the blocks a root can only lose whole — is
answered here by vectorised lookups over the connected components.
"""
from __future__ import annotations

from typing import Any, Iterable, Sequence

import torch

from .components import ComponentIndex, resolve_slice_ties, touching
from .node import Space

PRODUCT_SLICES = ("the slices of a product they belong to (e.g. an attention head of q, k and v) "
                  "could vanish in one operand only")


def _split(edges: torch.Tensor, is_reason: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The edges between channels, and those that tie a channel to a reason to keep it."""
    blocking = is_reason[edges[0]] | is_reason[edges[1]]
    return edges[:, ~blocking], edges[:, blocking]


class ChannelCoupling:
    """Coupling components of every traced channel id, with what blocks them."""

    def __init__(self, trace: Any, kept: Iterable[tuple[Space, str]], coupled: Iterable[tuple[Space, Space]] = ()):
        self.spaces: list[Space] = list(trace.spaces)
        self._bases = torch.tensor([s.base for s in self.spaces], dtype=torch.long)
        n_ids = trace.n_ids
        reasons = dict(trace.reasons)
        edges = [trace.edges]
        for a, b in coupled:  # channel i of a with channel i of b (module hints: couplings no tensor shows)
            edges.append(torch.stack([a.ids(), b.ids()]))
        for space, reason in kept:
            if space.size:
                reason_id, n_ids = n_ids, n_ids + 1
                reasons[reason_id] = reason
                ids = space.ids()
                edges.append(torch.stack([ids, torch.full_like(ids, reason_id)]))
                edges.append(torch.tensor([[reason_id], [0]]))
        # Membership follows couplings only; whether a channel is blocked follows the ties to reasons too.
        # (Blocked channels all meet at id 0: through those ties they would form one meaningless group.)
        is_reason = torch.zeros(n_ids, dtype=torch.bool)
        is_reason[0] = True
        is_reason[list(reasons)] = True
        # split each piece, not their concatenation: the trace's edges are the big one (~250 MB at 70B) and are
        # copied once, the kept spaces' edges (all to a reason) are small
        free, reason_edges = zip(*(_split(e, is_reason) for e in edges))
        coupled = free[0] if all(not f.numel() for f in free[1:]) else torch.cat(free, 1)
        del free
        roots, kept_slices = resolve_slice_ties(n_ids, coupled, trace.ties, is_reason)
        del coupled
        reason_edges = torch.cat(reason_edges, 1)
        if kept_slices.numel():
            reason_id, n_ids = n_ids, n_ids + 1
            reasons[reason_id] = PRODUCT_SLICES
            roots = torch.cat([roots, torch.tensor([reason_id])])
            reason_edges = torch.cat([reason_edges, torch.stack([kept_slices, torch.full_like(kept_slices, reason_id)])], 1)
        self._roots = roots
        self._reasons = reasons
        self._reason_edges = reason_edges
        # Every reason to keep channels is blocked; so is every component tied to one.
        is_reason = torch.cat([is_reason, torch.ones(n_ids - is_reason.numel(), dtype=torch.bool)])
        ends = reason_edges.flatten()
        self._blocked = touching(roots, ends[~is_reason[ends]]) | is_reason
        self._components = ComponentIndex(roots)
        self._sized_by_code = torch.zeros(n_ids, dtype=torch.bool)
        if trace.sized_by_code.numel():  # a prune that moves any of these, moves all of their component
            self._sized_by_code = touching(roots, trace.sized_by_code)
        self._owned = torch.zeros(n_ids, dtype=torch.bool)
        for space in self.spaces:
            self._owned[space.base:space.base + space.size] = True

    # --- ids of current channels -------------------------------------------------------
    @staticmethod
    def ids_of(space: Space, idxs: torch.Tensor) -> torch.Tensor:
        """The channel ids of current indices ``idxs`` of ``space``."""
        return space.base + space.original_positions(idxs)

    def roots(self, space: Space, idxs: torch.Tensor) -> torch.Tensor:
        """The coupling component of each current channel ``idxs`` of ``space``: one component is pruned together."""
        return self._roots[self.ids_of(space, idxs)]

    def component_roots(self, ids: torch.Tensor) -> torch.Tensor:
        return self._roots[ids]

    # --- groups -----------------------------------------------------------------------------
    def members(self, root: Space, index: torch.Tensor) -> tuple[list[tuple[Space, torch.Tensor]], list[str]]:
        """Every space that loses channels with ``index`` of ``root``, with its traced positions; and why it cannot.

        Spaces come in id order, each with one sorted run of traced positions.
        """
        if not index.numel():
            return [], []
        ids = self._components.members(self.ids_of(root, index))
        blocked_ids = ids[self._blocked[ids]]  # product slices included: they may be what is blocked
        ids = ids[self._owned[ids]]  # not id 0 ("blocked") nor the ids of product slices
        reasons: list[str] = []
        if blocked_ids.numel():
            u, v = self._reason_edges
            hit = torch.cat([v[torch.isin(u, blocked_ids)], u[torch.isin(v, blocked_ids)]])
            reasons = sorted({self._reasons[int(r)] for r in torch.unique(hit) if int(r) in self._reasons})
            reasons = reasons or ["they are coupled with channels that cannot shrink"]
        # ids are sorted and every space is one run of ids, so each space's members are one slice: splitting
        # once keeps a group that spans every layer (an LLM's hidden size) linear in its size, not size x layers
        space_ix = torch.searchsorted(self._bases, ids, right=True) - 1
        spaces, counts = torch.unique_consecutive(space_ix, return_counts=True)
        touched = [(self.spaces[s], run - self.spaces[s].base) for s, run in zip(spaces.tolist(), torch.split(ids, counts.tolist()))]
        return touched, reasons

    def prunable(self, space: Space) -> tuple[torch.Tensor, torch.Tensor]:
        """The alive traced positions of ``space`` and, for each, whether nothing blocks it."""
        alive = space.alive.nonzero().flatten()
        return alive, ~self._blocked[space.base + alive]

    def component_members(self, ids: torch.Tensor) -> torch.Tensor:
        return self._components.members(ids)

    def map_indices(self, source: Space, target: Space, idxs: Sequence[int]) -> list[int]:
        """Current indices of ``target`` that go when current indices ``idxs`` of ``source`` go."""
        index = torch.as_tensor(list(idxs), dtype=torch.long)
        ids = self._components.members(self.ids_of(source, index))
        ids = ids[ids > 0]
        inside = ids[(ids >= target.base) & (ids < target.base + target.size)] - target.base
        return target.current_positions(inside).tolist()

    def sized_by_code(self, ids: torch.Tensor) -> bool:
        """Whether any of ``ids`` met an op whose sizes the model's code passed in (a prune needs a run check)."""
        return bool(self._sized_by_code[ids].any())
