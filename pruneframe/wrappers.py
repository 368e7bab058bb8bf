"""Wrappers around a model -- ``torch.compile``, ``DataParallel``, ``DistributedDataParallel`` -- and the module they hold.

pruneframe prunes the held module: its parameters change in place, so the
wrapper keeps working (a compiled model recompiles on its next call, as after
any change of shapes; ``DataParallel`` replicates on every call). Only
``DistributedDataParallel`` keeps state of the old shapes -- its gradient
buckets -- so after a prune wrap the module again before training; pruning
through it says so. A wrapper whose parameters are sharded (FSDP) holds no
whole tensor to prune; that is an error saying what to pass instead.
"""
from __future__ import annotations

import warnings
from typing import Any

from torch import nn

from .errors import PruningError


def _kind(model: Any) -> str | None:
    name = type(model).__name__
    if name == "OptimizedModule" and isinstance(getattr(model, "_orig_mod", None), nn.Module):
        return "compiled"
    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        return "parallel"
    if any(c.__module__.startswith("torch.distributed.fsdp") for c in type(model).__mro__):
        return "sharded"  # FullyShardedDataParallel, or a module fully_shard turned into an FSDPModule
    return None


def unwrap(model: Any, pruning: bool = False) -> Any:
    """The module ``model`` wraps (through any number of wrappers), or ``model`` itself.

    With ``pruning``, a DistributedDataParallel wrapper warns that it must be rebuilt after the prune.
    """
    while True:
        kind = _kind(model)
        if kind == "compiled":
            model = model._orig_mod
        elif kind == "parallel":
            if pruning and isinstance(model, nn.parallel.DistributedDataParallel):
                warnings.warn(
                    "pruning the module DistributedDataParallel holds: DDP keeps gradient buckets of the old sizes, "
                    "so wrap the pruned module again (DistributedDataParallel(ddp.module)), and drop the old wrapper, "
                    "before training it",
                    UserWarning, stacklevel=3)
            model = model.module
        elif kind == "sharded":
            raise PruningError(
                f"{type(model).__name__} shards the model's parameters, so no whole tensor is there to prune: prune the "
                "model before wrapping it with FSDP (or gather a full copy, prune it, and shard that)"
            )
        else:
            return model
