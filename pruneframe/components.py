"""Connected components of the channel-coupling graph, computed in bulk.

Coupling is an equivalence: channels joined by any chain of couplings are
pruned together. Components are found by vectorised min-label propagation with
pointer jumping, so the cost grows with the number of couplings, not with
their square, and no Python loop runs per channel.
"""
from __future__ import annotations

import torch


def connected_components(n: int, edges: torch.Tensor) -> torch.Tensor:
    """For ids ``0..n-1`` joined by ``edges`` (a 2 x E long tensor), each id's component root.

    The root of a component is its smallest id, so a component that contains
    id 0 has root 0.
    """
    parent = torch.arange(n, dtype=torch.long)
    if edges.numel() == 0:
        return parent
    u, v = edges[0], edges[1]
    while True:
        pu, pv = parent[u], parent[v]
        low = torch.minimum(pu, pv)
        new = parent.clone()
        new.scatter_reduce_(0, pu, low, reduce="amin")
        new.scatter_reduce_(0, pv, low, reduce="amin")
        while True:  # pointer jumping: every id points at its root
            jumped = new[new]
            if torch.equal(jumped, new):
                break
            new = jumped
        if torch.equal(new, parent):
            return parent
        parent = new


class ComponentIndex:
    """Members of each component, looked up without scanning every id."""

    def __init__(self, roots: torch.Tensor):
        self.roots = roots
        self.order = torch.argsort(roots, stable=True)
        self.sorted_roots = roots[self.order]

    def members(self, ids: torch.Tensor) -> torch.Tensor:
        """Every id in a component of any of ``ids``, sorted."""
        wanted = torch.unique(self.roots[ids])
        starts = torch.searchsorted(self.sorted_roots, wanted, side="left")
        ends = torch.searchsorted(self.sorted_roots, wanted, side="right")
        counts = ends - starts
        if counts.numel() == 0:
            return ids.new_empty(0)
        offsets = torch.repeat_interleave(starts - torch.cumsum(counts, 0) + counts, counts)
        positions = torch.arange(int(counts.sum())) + offsets
        return torch.sort(self.order[positions]).values
