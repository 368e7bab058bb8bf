"""Channel labels: which channel each element of a traced tensor belongs to.

A label is an int64 tensor that broadcasts to the traced tensor's shape. Its
value at a position is a channel id (an index into the graph's id table), or
``NONE`` for data that belongs to no channel (constants, buffers). Id
``BLOCKED`` stands for everything that must never shrink: model inputs and
outputs, ops nobody understands, ignored layers.

Labels are kept *reduced*: a dimension along which every label is the same has
size 1, so a (1, 64, 1, 1) label describes a whole (N, 64, H, W) activation.
"""
from __future__ import annotations

import torch

NONE = -1
BLOCKED = 0


def reduce(ids: torch.Tensor) -> torch.Tensor:
    """The reduced form of ``ids``: every dimension along which it is constant shrinks to size 1."""
    for d in range(ids.dim()):
        if ids.shape[d] > 1:
            first = ids.narrow(d, 0, 1)
            if bool((ids == first).all()):
                ids = first
    return ids


def placed(shape: torch.Size | tuple[int, ...], dim: int, values: torch.Tensor) -> torch.Tensor:
    """``values`` laid along ``dim`` of a reduced label for a tensor of ``shape``."""
    ndim = len(shape)
    dim = dim % ndim if ndim else 0
    view = [1] * ndim
    if ndim:
        view[dim] = values.numel()
        return values.view(view)
    return values.view(())


def constant(shape: torch.Size | tuple[int, ...], value: int) -> torch.Tensor:
    """A reduced label with one value everywhere."""
    return torch.full([1] * len(shape), value, dtype=torch.long)


def full(ids: torch.Tensor | None, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """The label expanded (without copying) to ``shape``; a missing label is NONE everywhere."""
    if ids is None:
        return torch.full((), NONE, dtype=torch.long).expand(shape)
    return ids.expand(shape)


def align(ids: torch.Tensor, ndim: int) -> torch.Tensor:
    """Prepend size-1 dimensions so ``ids`` lines up with a broadcast result of ``ndim`` dims."""
    if ids.dim() < ndim:
        return ids.view((1,) * (ndim - ids.dim()) + tuple(ids.shape))
    return ids
