"""A prune as a transaction: remember what the touched modules hold, run the steps, and put it all back on any failure.

``Group.prune()`` and plan replay both apply prunes through ``Transaction``,
so a model is never left half-pruned. Nothing is copied: the snapshot keeps
references to the original tensors (pruners replace tensors rather than write
into them), so the cost is the model plus the new tensors the steps create.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
from torch import nn

from ..errors import PruningError


class Transaction:
    """Everything a prune can change in ``modules`` (and their submodules) and ``tensors``, to put back if it fails."""

    def __init__(self, modules: Iterable[nn.Module] = (), tensors: Iterable[torch.Tensor] = ()):
        kept_modules: dict[int, nn.Module] = {}
        kept_tensors: dict[int, torch.Tensor] = {id(t): t for t in tensors}
        for module in modules:
            for m in module.modules():
                kept_modules[id(m)] = m
                for t in [*m._parameters.values(), *m._buffers.values()]:
                    if t is not None:
                        kept_tensors[id(t)] = t
        self._modules = [(m, dict(m.__dict__), dict(m._parameters), dict(m._buffers), dict(m._modules))
                         for m in kept_modules.values()]
        self._tensors = [(t, t.detach(), t.detach()._version, t.grad) for t in kept_tensors.values()]

    def restore(self) -> None:
        """Put every remembered module and tensor back as it was."""
        for m, attributes, params, buffers, children in self._modules:
            m.__dict__.clear()
            m.__dict__.update(attributes)
            for container, saved in ((m._parameters, params), (m._buffers, buffers), (m._modules, children)):
                container.clear()
                container.update(saved)
        for t, data, _, grad in self._tensors:
            t.data = data
            t.grad = grad

    def written_in_place(self) -> list[str]:
        """The original tensors someone wrote into (their version counter moved)."""
        return [f"a tensor of shape {tuple(data.shape)}" for _, data, version, _ in self._tensors if data._version != version]

    def run(self, what: str, step: Callable[[], Any]) -> None:
        """Run one step; if it raises or writes into an original tensor, restore everything and raise a PruningError naming ``what``."""
        try:
            step()
        except Exception as exc:  # any failure of a plugin's code: undo, and name the step and plugin
            self.restore()
            raise PruningError(
                f"{what} failed: {type(exc).__name__}: {exc}. Every touched module was restored; the model is as it was."
            ) from exc
        written = self.written_in_place()
        if written:
            self.restore()
            raise PruningError(
                f"{what} wrote in place into {', '.join(written)}: pruners must replace tensors (see "
                "pruneframe.layer_pruner.select_), never modify them, or no failed prune can be undone. Shapes and "
                "attributes were restored, but the values it overwrote cannot be; fix the pruner."
            )

    def fail(self, error: PruningError) -> None:
        """Restore everything and raise ``error``."""
        self.restore()
        raise error
