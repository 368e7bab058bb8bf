"""Scores for whole experts of a mixture-of-experts layer: weight magnitude, or router probability mass on calibration data.

An expert is one index along the expert dimension (dim 0) of its router's
weight and of every fused expert tensor. Both criteria return one score per
expert, higher meaning more important; a pruner removes the lowest first.

- ``expert_magnitude(tensors, p=2)``: per expert, the p-norm of everything it
  owns (its router row, its slices of the expert weights), read from the
  weights alone.
- ``RouterMassImportance``: per expert, the mean router probability it gets
  per token, accumulated over calibration batches by a forward hook on each
  router (``softmax`` of the router's logits, summed over tokens in float64;
  no activation is kept). Inside a ``torch.distributed`` process group the sums
  are added over the ranks when a block ends, so every rank removes the same
  experts.

``ExpertRouter`` is a marker class: a router's layer pruner declares
``acts_like = (ExpertRouter,)``, so routers are group roots only where asked
(``root_module_types=[nn.Linear, ExpertRouter]``) and criteria read them where
their ``target_types`` name it. Called on a group (as ``MetaPruner`` does),
``RouterMassImportance`` scores the experts of a calibrated router's group and
hands every other group to its ``fallback`` (e.g. ``MagnitudeImportance(p=2)``
for the expert widths).

Example::

    mass = RouterMassImportance()
    with mass.collect(routers):          # routers: the modules whose first output is the router logits
        for batch in batches:
            model(**batch)
    scores = mass.scores(routers[0])     # one per expert of that router
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
from torch import nn

from ..layer_pruner import counts_as
from ..runtime import tensors_in
from .activation import NotCalibratedError
from .criteria import NothingToReadError
from .distributed import sum_over_ranks


class ExpertRouter:
    """Marker for ``acts_like``: the layer is a mixture-of-experts router whose output channels are whole experts."""


def expert_magnitude(tensors: Sequence[torch.Tensor], p: float = 2) -> torch.Tensor:
    """Per expert (index along dim 0, shared by every tensor), the p-norm of its entries over all ``tensors``."""
    if not tensors:
        raise ValueError("expert_magnitude needs at least one tensor with the experts along dim 0 (the router weight, the expert weights)")
    experts = {t.shape[0] for t in tensors}
    if len(experts) != 1:
        raise ValueError(f"expert_magnitude: the tensors disagree on the number of experts along dim 0 ({sorted(experts)}); "
                         "pass only tensors whose dim 0 is the expert dimension")
    if not p > 0:
        raise ValueError(f"expert_magnitude: p={p!r}; use a positive norm exponent such as 1 or 2")
    total = sum(t.detach().double().abs().pow(p).flatten(1).sum(1) for t in tensors)
    return total.pow(1.0 / p).float()


class RouterMassImportance:
    """Per expert, the mean router probability a token gives it, over every calibration batch seen (see the module docstring)."""

    def __init__(self, fallback: Callable[[Any], torch.Tensor] | None = None) -> None:
        if fallback is not None and not callable(fallback):
            raise TypeError(f"fallback={fallback!r}: pass an importance such as MagnitudeImportance(p=2), or None")
        self.fallback = fallback
        self._sums: dict[nn.Module, torch.Tensor] = {}
        self._tokens: dict[nn.Module, float] = {}
        self._pending: dict[nn.Module, tuple[torch.Tensor, float]] = {}

    def reset(self) -> None:
        """Forget every batch seen."""
        self._sums.clear()
        self._tokens.clear()
        self._pending.clear()

    @contextlib.contextmanager
    def collect(self, routers: Iterable[nn.Module]) -> Iterator["RouterMassImportance"]:
        """Count every forward pass of ``routers`` run inside the block; their first tensor output must be the logits."""
        routers = list(routers)
        if not routers:
            raise ValueError("RouterMassImportance.collect got no routers; pass the router modules of the model's MoE layers")
        for router in routers:
            if not isinstance(router, nn.Module):
                raise TypeError(f"RouterMassImportance.collect takes router modules, not {type(router).__name__}")
        handles = [router.register_forward_hook(self._hook) for router in routers]
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()
            self._merge()

    def _hook(self, module: nn.Module, args: Any, output: Any) -> None:
        outputs = tensors_in(output)
        if not outputs or not outputs[0].is_floating_point():
            raise TypeError(f"RouterMassImportance: {type(module).__name__} returned no floating-point logits first; "
                            "collect from the module whose first output is the router logits (tokens x experts)")
        with torch.no_grad():
            logits = outputs[0].detach()
            probs = torch.softmax(logits.double(), dim=-1).reshape(-1, logits.shape[-1])
            mass = probs.sum(0).cpu()
        seen, tokens = self._pending.get(module, (torch.zeros_like(mass), 0.0))
        if seen.shape != mass.shape:
            raise ValueError(f"RouterMassImportance: {type(module).__name__} now has {mass.numel()} experts, not {seen.numel()}; "
                             "call reset() after removing experts")
        self._pending[module] = (seen + mass, tokens + probs.shape[0])

    def _merge(self) -> None:
        routers = list(self._pending)
        sums, counts = sum_over_ranks([self._pending[r][0] for r in routers], [self._pending[r][1] for r in routers],
                                      "router probability mass")
        self._pending.clear()
        for router, total, count in zip(routers, sums, counts):
            if total is None:
                continue
            previous = self._sums.get(router)
            self._sums[router] = total if previous is None else previous + total
            self._tokens[router] = self._tokens.get(router, 0.0) + count

    def __call__(self, group: Any) -> torch.Tensor:
        """Scores for ``group``'s root indices: the router mass of its experts if it is rooted at a router, else ``fallback``'s."""
        root = group.root
        if root.kind == "layer" and counts_as(root.module, root.pruner, (ExpertRouter,)):
            return self.scores(root.module)[torch.as_tensor(group.root_idxs, dtype=torch.long)]
        if self.fallback is None:
            raise NothingToReadError(f"RouterMassImportance scores only groups rooted at a router, not {root.name} "
                                     f"({root.type}); pass fallback=MagnitudeImportance(p=2) to score the others")
        return self.fallback(group)

    def scores(self, router: nn.Module) -> torch.Tensor:
        """The mean probability per token of each of ``router``'s experts; raises ``NotCalibratedError`` if it never ran."""
        total = self._sums.get(router)
        if total is None or not self._tokens.get(router):
            raise NotCalibratedError(f"RouterMassImportance has seen no batch through {type(router).__name__}: run calibration "
                                     "batches inside `with importance.collect(routers):` first")
        return (total / self._tokens[router]).float()
