"""Connected components of the channel-coupling graph, computed in bulk.

Coupling is an equivalence: channels joined by any chain of couplings are
pruned together. Components are found by vectorised min-label propagation with
pointer jumping, so the cost grows with the number of couplings, not with
their square, and no Python loop runs per channel.
"""
from __future__ import annotations

import torch


_CHUNK = 1 << 21  # edges per piece of a propagation round


def connected_components(n: int, edges: torch.Tensor) -> torch.Tensor:
    """For ids ``0..n-1`` joined by ``edges`` (a 2 x E long tensor), each id's component root.

    The root of a component is its smallest id, so a component that contains
    id 0 has root 0.
    """
    if edges.numel() == 0:
        return torch.arange(n, dtype=torch.long)
    # ids as int32 while they fit (half the memory of the id-sized arrays); the roots come back as int64
    parent = torch.arange(n, dtype=torch.int32 if n < 2**31 else torch.long)
    u, v = edges[0], edges[1]
    while True:
        new = parent.clone()
        for start in range(0, u.numel(), _CHUNK):  # in pieces: three edge-sized temporaries would double the peak
            pu, pv = parent[u[start:start + _CHUNK]], parent[v[start:start + _CHUNK]]
            low = torch.minimum(pu, pv)
            new.scatter_reduce_(0, pu.long(), low, reduce="amin")
            new.scatter_reduce_(0, pv.long(), low, reduce="amin")
        while True:  # pointer jumping: every id points at its root
            jumped = new[new]
            if torch.equal(jumped, new):
                break
            new = jumped
        if torch.equal(new, parent):
            return parent.long()
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


def resolve_slice_ties(n_ids: int, edges: torch.Tensor, ties: list[tuple[torch.Tensor, list[torch.Tensor]]],
                       unmovable: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Components of ``edges`` once slices that exist only together are joined.

    Each tie is ``(slice_ids, sides)``: slice ``p`` (id ``slice_ids[p]``) exists
    while row ``p`` of every side (a ``(P, k)`` id tensor) does. A side's row
    lying in one component vanishes with exactly that component, so the slice
    joins it; a row spread over several components, or holding a constant
    (negative id) or an id in ``unmovable`` (reasons to keep), never vanishes by
    one prune, so its slice, and whatever joined it, must stay. Joining can put
    a row into one component that was spread before, so this repeats until
    nothing changes; slice ids can sit in other ties' rows (a product of
    products).

    Returns every id's component root (as ``connected_components``) and the
    slice ids that must stay.
    """
    roots = connected_components(n_ids, edges)
    if not ties:
        return roots, torch.empty(0, dtype=torch.long)
    member_ids, keys, key_slice = [], [], []
    n_keys = 0
    for slice_ids, sides in ties:
        for side in sides:
            rows, width = side.shape
            member_ids.append(side.reshape(-1))
            keys.append(torch.arange(n_keys, n_keys + rows).repeat_interleave(width))
            key_slice.append(slice_ids)
            n_keys += rows
    ids, key, key_slice_ids = torch.cat(member_ids), torch.cat(keys), torch.cat(key_slice)
    bad = ids < 0
    bad[~bad] = unmovable[ids[~bad]]
    stuck = torch.zeros(n_keys, dtype=torch.bool).scatter_reduce_(0, key, bad, reduce="amax")
    safe_ids = ids.clamp(min=0)
    while True:
        r = roots[safe_ids]
        low = torch.full((n_keys,), n_ids, dtype=torch.long).scatter_reduce_(0, key, r, reduce="amin")
        high = torch.full((n_keys,), -1, dtype=torch.long).scatter_reduce_(0, key, r, reduce="amax")
        single = (low == high) & ~stuck
        pending = single & (roots[key_slice_ids] != low)
        if not bool(pending.any()):
            break
        # the roots are settled: only the components the joins touch merge, so solve those few ids alone
        roots = _merged(roots, torch.stack([roots[key_slice_ids[pending]], low[pending]]))
    return roots, torch.unique(key_slice_ids[~single])


def _merged(roots: torch.Tensor, joins: torch.Tensor) -> torch.Tensor:
    """``roots`` (each id's component root) after the components of each pair of roots in ``joins`` merged.

    The connected components are found among the roots the joins name only (renumbered from 0 in ascending
    order, so the smallest id stays a component's root), not among every id: a 70B model's graph has 14 M ids.
    """
    involved, pairs = torch.unique(joins, return_inverse=True)
    merged = involved[connected_components(involved.numel(), pairs.reshape(2, -1))]
    table = torch.arange(roots.numel())
    table[involved] = merged
    return table[roots]


def touching(roots: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """A mask of every id whose component holds one of ``ids``."""
    hit = torch.zeros(roots.numel(), dtype=torch.bool)
    hit[roots[ids]] = True
    return hit[roots]
