"""``BlockInfluenceImportance``: how much each block of a layer list changes the hidden state that flows through it.

Block influence (the ShortGPT measure) is ``1 - cos(x, y)`` between a block's
input ``x`` and output ``y``, per position (a token; ``dim`` is the hidden
dimension), averaged over every position of every calibration batch. A block
whose output points where its input did adds little and goes first. Forward
hooks add the sum and the count to running totals, so no activation is kept.

Only blocks that pass the hidden state on are scored: a block's input is its
first tensor argument (or keyword argument), its output the first tensor it
returns, block ``k + 1`` must receive what block ``k`` returned (the stack a
residual stream runs through, not experts side by side), and a block that
changes the shape (a stage's downsampling first block) is left unscored. Example::

    imp = BlockInfluenceImportance()
    with imp.compute_importance(model):
        for batch in batches:
            model(**batch)
    ranked = imp.ranking()             # LayerScores, least influential first
    tp.pruner.remove_layers(model, ranked[:2])

or ``tp.pruner.rank_layers(model, batches)``, which runs the batches in eval
mode and leaves the model as it was. Inside a ``torch.distributed`` process
group the totals are summed over the ranks when the block ends. It scores
blocks, not channels: MetaPruner cannot use it as its ``importance``.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor

from ..errors import PruningError
from ..runtime import tensors_in
from .activation import NotCalibratedError
from .distributed import sum_over_ranks


class BlockInfluenceImportance:
    """Per block of every layer list (or of those named in ``layer_lists``): the mean ``1 - cos(input, output)`` over ``dim``."""

    def __init__(self, dim: int = -1, layer_lists: list[str] | None = None):
        if isinstance(dim, bool) or not isinstance(dim, int):
            raise TypeError(f"dim={dim!r}: the hidden dimension the cosine is taken over, an int (-1 for [batch, tokens, "
                            "hidden], 1 for [batch, channels, height, width])")
        self.dim = dim
        self.layer_lists = None if layer_lists is None else list(layer_lists)
        self.reset()

    def reset(self) -> None:
        """Forget everything collected (after a removal the positions have moved)."""
        self._totals: dict[tuple[str, int], list[float]] = {}  # (list name, position) -> [sum of 1 - cos, positions seen]
        self._names: dict[tuple[str, int], str] = {}
        self._removable: set[tuple[str, int]] = set()
        self._skipped: dict[str, str] = {}  # list (or block) name -> why its blocks (or it) are not scored

    @contextlib.contextmanager
    def compute_importance(self, model: nn.Module) -> Iterator["BlockInfluenceImportance"]:
        """Inside the block, every forward of ``model`` adds to the scores of its blocks."""
        from ..pruner.depth import layer_lists

        lists = layer_lists(model)
        if self.layer_lists is not None:
            known = {ll.name for ll in lists}
            unknown = [n for n in self.layer_lists if n not in known]
            if unknown:
                raise ValueError(f"layer_lists={unknown!r}: the model has no such layer list; it has "
                                 f"{sorted(known) or 'none'}")
            lists = [ll for ll in lists if ll.name in self.layer_lists]
        pending: dict[tuple[str, int], list[float]] = {}
        handles = []
        try:
            for ll in lists:
                chain = _Chain(ll.name, len(ll), self._skipped)
                for k, block in enumerate(ll.container._modules.values()):
                    self._names[(ll.name, k)] = ll.block_name(k)
                    if k in ll.removable:
                        self._removable.add((ll.name, k))
                    handles.append(block.register_forward_hook(self._hook(ll.name, k, chain, pending), with_kwargs=True))
            yield self
        finally:
            for handle in handles:
                handle.remove()
        self._merge(pending)

    def _hook(self, list_name: str, position: int, chain: "_Chain", pending: dict[tuple[str, int], list[float]]) -> Any:
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            x = next((t for t in tensors_in((args, kwargs)) if t.is_floating_point()), None)
            y = next((t for t in tensors_in(output) if t.is_floating_point()), None)
            if x is None or y is None or isinstance(x, FakeTensor) or x.is_meta:
                return
            if not chain.passes_on(position, x, y):
                return
            if x.shape != y.shape:
                self._skipped.setdefault(self._names[(list_name, position)], (
                    f"it maps {tuple(x.shape)} to {tuple(y.shape)}; only blocks that keep the shape can be scored (and removed)"))
                return
            with torch.no_grad():
                cos = torch.nn.functional.cosine_similarity(x.detach().float(), y.detach().float(), dim=self.dim)
                total = pending.setdefault((list_name, position), [0.0, 0.0])
                total[0] += float((1 - cos).sum(dtype=torch.float64))
                total[1] += cos.numel()

        return hook

    def _merge(self, pending: dict[tuple[str, int], list[float]]) -> None:
        keys = sorted(self._names)  # the same order on every rank
        sums, counts = sum_over_ranks(
            [torch.tensor([pending[k][0]], dtype=torch.float64) if k in pending else None for k in keys],
            [pending[k][1] if k in pending else 0.0 for k in keys], "BlockInfluenceImportance")
        for key, total, count in zip(keys, sums, counts):
            if total is None or key[0] in self._skipped or self._names[key] in self._skipped:
                continue
            settled = self._totals.setdefault(key, [0.0, 0.0])
            settled[0] += float(total[0])
            settled[1] += count

    def scores(self) -> dict[str, float]:
        """Block name -> its block influence so far (higher: the block changes the hidden state more)."""
        if not self._totals:
            skipped = "; ".join(f"{name or '(model)'}: {why}" for name, why in self._skipped.items())
            raise NotCalibratedError(
                "BlockInfluenceImportance has scored no block"
                + (f" ({skipped})" if skipped else ": run calibration batches inside compute_importance(model) first, "
                   "or use tp.pruner.rank_layers(model, batches)")
            )
        return {self._names[key]: total / count for key, (total, count) in sorted(self._totals.items()) if count}

    def ranking(self) -> list[Any]:
        """``LayerScore`` s of the scored blocks ``remove_layers`` can remove, least influential first (ties: later first).

        A block that differs in layout from the rest of its list (T5's first block, with the relative position
        bias) is scored (``scores()``) but not ranked.
        """
        from ..pruner.depth import LayerScore

        scores = self.scores()
        ranked = [LayerScore(self._names[key], key[0], key[1], scores[self._names[key]]) for key in self._totals
                  if self._names[key] in scores and key in self._removable]
        return sorted(ranked, key=lambda s: (s.score, -s.position))

    def skipped(self) -> dict[str, str]:
        """Layer list or block name -> why it was not scored (the blocks do not pass the state on; it changes the shape)."""
        return dict(self._skipped)

    def __call__(self, group: Any) -> torch.Tensor:
        raise PruningError("BlockInfluenceImportance scores whole blocks, not the channels of a group: rank them with "
                           "tp.pruner.rank_layers(model, batches) and remove them with tp.pruner.remove_layers")


class _Chain:
    """Checks, block by block, that a layer list passes the hidden state on; marks the list skipped when it does not."""

    def __init__(self, name: str, length: int, skipped: dict[str, str]):
        self.name, self.length, self.skipped = name, length, skipped
        self.last: tuple[int, torch.Tensor] | None = None  # the position and output of the block that ran last

    def passes_on(self, position: int, x: torch.Tensor, y: torch.Tensor) -> bool:
        if self.name in self.skipped:
            return False
        last, self.last = self.last, (position, y)
        if position == self.length - 1:
            self.last = None  # keep no activation past the list's last block
        if position == 0:
            return True
        if last is None or last[0] != position - 1 or not _same_tensor(last[1], x):
            self.skipped[self.name] = (f"block {position} does not receive what block {position - 1} returned, so the "
                                       "blocks do not form a stack (experts side by side, or a list the forward indexes)")
            return False
        return True


def _same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a is b or (a.shape == b.shape and a.dtype == b.dtype and a.device == b.device and a.data_ptr() == b.data_ptr())


__all__ = ["BlockInfluenceImportance"]
