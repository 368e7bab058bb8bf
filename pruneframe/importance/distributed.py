"""Summing calibration statistics over the ranks of a ``torch.distributed`` process group, so every rank plans alike.

Each rank passes the same list of statistics, in the same order (a running sum
per layer, flat, with its count); an entry a rank has not seen is ``None``
there. Three collectives run whatever the list's length: the list's length,
the sums' sizes, then every sum and count in one float64 vector. A
disagreement (different lists, or one statistic with different sizes) is
found from the reduced values, so every rank raises the same error instead of
one rank waiting forever for the others.
"""
from __future__ import annotations

import torch

_ABSENT_HIGH = -1
_ABSENT_LOW = 2**62


def in_process_group() -> bool:
    """Whether a ``torch.distributed`` process group is initialised (the statistics are then summed over its ranks)."""
    distributed = torch.distributed
    return distributed.is_available() and distributed.is_initialized()


def _collective_device() -> torch.device:
    """Where the backend takes its tensors: NCCL the current CUDA device, gloo (and others) the CPU."""
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _max(values: torch.Tensor) -> torch.Tensor:
    torch.distributed.all_reduce(values, op=torch.distributed.ReduceOp.MAX)
    return values


def sum_over_ranks(sums: list[torch.Tensor | None], counts: list[float], what: str) -> tuple[list[torch.Tensor | None], list[float]]:
    """Every rank's ``sums`` (flat tensors) and ``counts`` added up, entry by entry; unchanged outside a process group.

    ``what`` names the statistics in errors. An entry no rank has seen stays ``None``; one seen elsewhere only
    comes back as those ranks' sum. The sums come back in float64 on the devices they were on (the CPU for
    entries this rank had not seen).
    """
    if not in_process_group():
        return sums, counts
    if len(sums) != len(counts):
        raise ValueError(f"{what}: {len(sums)} sums but {len(counts)} counts")
    device = _collective_device()
    n = len(sums)
    lengths = _max(torch.tensor([n, -n], dtype=torch.int64, device=device)).tolist()
    if lengths[0] != -lengths[1]:
        raise RuntimeError(f"{what}: the ranks collected different numbers of statistics ({-lengths[1]} to {lengths[0]}); "
                           "every rank must run the same model, with the same layers hooked")
    sizes = [s.numel() if s is not None else None for s in sums]
    bounds = torch.tensor([_ABSENT_HIGH if k is None else k for k in sizes] + [-_ABSENT_LOW if k is None else -k for k in sizes],
                          dtype=torch.int64, device=device)
    bounds = _max(bounds).tolist()
    high, low = bounds[:n], [-b for b in bounds[n:]]
    differ = [k for k in range(n) if low[k] != _ABSENT_LOW and low[k] != high[k]]
    if differ:
        raise RuntimeError(f"{what}: statistic {differ[0]} has {low[differ[0]]} entries on one rank and {high[differ[0]]} on "
                           "another; every rank must run the same (equally pruned) model")
    seen = [k for k in range(n) if high[k] != _ABSENT_HIGH]
    parts = [sums[k].detach().to(device, torch.float64).flatten() if sums[k] is not None
             else torch.zeros(high[k], dtype=torch.float64, device=device) for k in seen]
    parts.append(torch.tensor([counts[k] for k in seen], dtype=torch.float64, device=device))
    flat = torch.cat(parts)
    torch.distributed.all_reduce(flat, op=torch.distributed.ReduceOp.SUM)
    pieces = torch.split(flat, [high[k] for k in seen] + [len(seen)])
    out_sums: list[torch.Tensor | None] = [None] * n
    out_counts = [0.0] * n
    for j, k in enumerate(seen):
        home = sums[k].device if sums[k] is not None else torch.device("cpu")
        out_sums[k] = pieces[j].to(home)
        out_counts[k] = float(pieces[-1][j])
    return out_sums, out_counts
