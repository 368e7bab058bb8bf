"""MetaPruner's depth step: ``MetaPruner(..., remove_layers=n or [names])`` removes whole blocks before the first width prune.

A mixin of ``MetaPruner`` (the removal itself is ``pruneframe.pruner.depth``). With a count ``n``,
``pruner.calibrate(batches)`` also ranks the blocks by block influence (in the same pass as a data-driven
importance's statistics, or on its own for a weight criterion); with names nothing needs data. At the start of
the first ``step()`` (``step(interactive=True)`` too, before its generator is returned) the ``n`` least
influential removable blocks (each layer list keeping one) or the named ones are removed with
``remove_layers``, which runs the example inputs and undoes the removal if the model no longer runs. Then the
graph is traced again, and what the pruner held of removed modules (ignored layers, ratio-dict entries,
``num_heads``, channel groups) is dropped. A MACs or parameter target stays a share of the *original* model's
counts, so the removal counts toward it: the ratio search runs on the shallower model
(``search_target_ratio()`` before the first step too: its shape-only twin loses the blocks first). Example::

    pruner = tp.pruner.MetaPruner(model, example_inputs, tp.importance.MagnitudeImportance(p=2),
                                  pruning_ratio=0.2, remove_layers=2)
    pruner.calibrate(batches)    # ranks the blocks
    pruner.step()                # removes 2 blocks, then prunes 20% of the remaining widths
    pruner.removed_layers        # ('model.layers.5', 'model.layers.6'): their names before the removal
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
from torch import nn

from ..errors import PruningError
from ..importance import ActivationImportance, HessianImportance, TaylorImportance
from ..importance.activation import NotCalibratedError
from ..importance.block_influence import BlockInfluenceImportance
from ..progress import bar
from ..runtime import default_forward
from . import calibration
from .depth import LayerScore, layer_lists, rank_layers, remove_layers

_DATA_DRIVEN = (ActivationImportance, TaylorImportance, HessianImportance)


class DepthSteps:
    """The depth part of ``MetaPruner`` (it uses the pruner's model, graph, forward_fn and the state built from them)."""

    remove_layers: int | tuple[str, ...] | None = None  # set by MetaPruner.__init__ (checked by arguments.check_remove_layers)
    layer_ranking: list[LayerScore] | None = None  # after calibrate() with a count: every scored block, least influential first
    removed_layers: tuple[str, ...] = ()  # after the first step: the removed blocks, named as they were before
    _depth_done = False

    def _removal_pending(self) -> bool:
        return bool(self.remove_layers) and not self._depth_done

    def _calibrate(self, batches: Iterable[Any], forward_fn: Callable[[nn.Module, Any], Any] | None,
                   loss_fn: Callable[[nn.Module, Any], torch.Tensor] | None, progress: bool | None) -> int:
        """``MetaPruner.calibrate``: feed the importance and, while a counted removal is pending, rank the blocks too."""
        if not (self._removal_pending() and isinstance(self.remove_layers, int)):
            return calibration.calibrate(self, batches, forward_fn=forward_fn, loss_fn=loss_fn, progress=progress)
        influence = BlockInfluenceImportance()
        if isinstance(self.importance, _DATA_DRIVEN):  # one pass: the block hooks ride along the importance's batches
            with influence.compute_importance(self.model):
                seen = calibration.calibrate(self, batches, forward_fn=forward_fn, loss_fn=loss_fn, progress=progress)
        else:
            if loss_fn is not None:
                name = type(self.importance).__name__
                raise ValueError(f"calibrate: loss_fn is for gradient criteria (Taylor, Hessian); {name} reads the weights, "
                                 "and remove_layers ranks blocks by what flows through them: drop loss_fn")
            base = forward_fn or self.forward_fn or default_forward
            seen = 0

            def counted(model: nn.Module, batch: Any) -> Any:
                nonlocal seen
                seen += 1
                return base(model, batch)

            rank_layers(self.model, batches, importance=influence, forward_fn=counted,
                        progress=self.progress if progress is None else progress)
        self.layer_ranking = influence.ranking()
        self._lowest_blocks()  # too few scored blocks is said now, not at the step
        return seen

    def _lowest_blocks(self) -> list[str]:
        """The ``remove_layers`` least influential ranked blocks, each layer list keeping at least one."""
        assert isinstance(self.remove_layers, int) and self.layer_ranking is not None
        sizes = {ll.name: len(ll) for ll in layer_lists(self.model)}
        taken: dict[str, int] = {}
        chosen: list[str] = []
        for score in self.layer_ranking:
            if len(chosen) == self.remove_layers:
                break
            if taken.get(score.layer_list, 0) + 1 < sizes.get(score.layer_list, 0):
                taken[score.layer_list] = taken.get(score.layer_list, 0) + 1
                chosen.append(score.name)
        if len(chosen) < self.remove_layers:
            raise ValueError(
                f"remove_layers={self.remove_layers}: block influence ranked only {len(chosen)} block(s) that can go "
                f"({', '.join(chosen) or 'none'}); a block that changes the shape, or does not pass the hidden state on to "
                f"the next, is not scored. Pass remove_layers={len(chosen)} or name the blocks to remove")
        return chosen

    def _pending_blocks(self) -> list[str]:
        """The blocks the pending removal takes: the named ones, or the ``remove_layers`` least influential (calibrated)."""
        if not isinstance(self.remove_layers, int):
            return list(self.remove_layers or ())
        if self.layer_ranking is None:
            raise NotCalibratedError(
                f"remove_layers={self.remove_layers} needs pruner.calibrate(batches) first (block influence ranks the "
                "layers); or name the blocks to remove, remove_layers=['model.layers.3', ...], which needs no data")
        return self._lowest_blocks()

    def _remove_pending_layers(self) -> None:
        """At the start of the first step: remove the blocks, then trace again and drop what pointed to them."""
        if not self._removal_pending():
            return
        gone = remove_layers(self.model, self._pending_blocks(), example_inputs=self.example_inputs, forward_fn=self.forward_fn,
                             registry=self.DG.registry)
        self.removed_layers = tuple(gone)
        self._depth_done = True
        self._earlier_history += self.DG.pruning_history()
        with bar("tracing the model again", total=1, enabled=self.progress) as tracing:
            self.DG = self._trace_graph()
            tracing.update()
        self._forget_removed_modules()
        self.update_regularizer()

    def _forget_removed_modules(self) -> None:
        alive = {id(m) for m in self.model.modules()} | {id(p) for p in self.model.parameters()}
        self.ignored_layers = [layer for layer in self.ignored_layers if id(layer) in alive]
        for held in (self.pruning_ratio_dict, self._layer_scope, self.num_heads, self._head_dims, self.head_pruning_ratio_dict,
                     self.out_channel_groups, self.in_channel_groups):
            for key in [k for k in held if id(k) not in alive]:
                del held[key]
        # no width has changed yet: a kept layer's original width is the one it has
        self._original = {m: self._original.get(m, node.out_space.size) for m, node in self.DG.module2node.items()
                          if node.out_space is not None}

    def _graph_history(self, history: list) -> list:
        """``pruning_history()``, refused after a removal: its renumbered names would prune wrong layers of a fresh model."""
        if self.removed_layers:
            raise PruningError(
                f"pruning_history() cannot replay this prune: it removed {', '.join(self.removed_layers)}, and the history "
                "names layers of the shallower model. Save and replay the pruning plan instead: "
                "pruneframe.state_dict(model) / pruneframe.load_state_dict(fresh_model, state_dict)")
        return history

    def _twin_removal(self) -> tuple[str, ...]:
        """A search before the first step counts the pending removal: the shape twin loses those blocks first."""
        return tuple(self._pending_blocks()) if self._removal_pending() else ()


__all__ = ["DepthSteps"]
