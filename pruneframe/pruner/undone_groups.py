"""MetaPruner's fallback when a step as a whole is undone: the step again, group by group, each checked on its own.

A step's groups are pruned in one ``DependencyGraph.one_run_check`` block. When the block is undone — the model no
longer runs on the example inputs (``ModelStopsRunningError``), or with ``keep_loadable`` a fix-up says the
model's own format cannot state the result (``UnloadableError``: BERT's config derives the head width from the
hidden size) — ``prune_one_by_one`` prunes each group in a block of its own. A group that fails its check is left
whole, recorded in ``pruner.left_whole`` with the reason, and named in one warning per kind; the rest of the step
is pruned.
"""
from __future__ import annotations

import warnings
from typing import Any, Iterable

from ..errors import ModelStopsRunningError, UnloadableError

_SHOWN = 6


def _layers(group: Any) -> str:
    names = [dep.target.name for dep, _ in group]
    return ", ".join(names[:_SHOWN]) + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")


def _detail(exc: Exception) -> str:
    """The reason inside the parentheses of an undone prune's message."""
    return str(exc).split("(", 1)[-1].split("); it was undone")[0]


class UndoneGroupSteps:
    """The one-by-one part of ``MetaPruner`` (it uses the pruner's graph, ``keep_loadable`` and ``left_whole``)."""

    def _prune_one_by_one(self, groups: Iterable[Any]) -> None:
        """Prune ``groups`` each in its own checked block; one that fails its check stays whole, with a warning."""
        stops, unloadable = [], []
        for group in groups:
            try:
                with self.DG.one_run_check(self.keep_loadable):
                    group.prune()
            except ModelStopsRunningError as exc:
                stops.append(f"{_layers(group)} ({_detail(exc)})")
                self.left_whole.append((group, f"a size the model's code keeps: after pruning it the model no longer runs "
                                               f"({_detail(exc)})"))
            except UnloadableError as exc:
                unloadable.append(f"{_layers(group)} ({_detail(exc)})")
                self.left_whole.append((group, f"the model's own format could not state it ({_detail(exc)})"))
        if stops:
            warnings.warn(
                f"{len(stops)} group(s) left whole: after pruning them the model no longer runs on the example inputs "
                "(or slices them wrongly), its code keeps a size they change: " + "; ".join(stops) + ". The rest of the step was pruned; "
                "keep these layers out (ignored_layers) to silence this, or make the code read the size from the tensor",
                stacklevel=3)
        if unloadable:
            warnings.warn(
                f"{len(unloadable)} group(s) left whole so that the model stays loadable from its own format: "
                + "; ".join(unloadable) + ". The rest of the step was pruned. To prune them anyway pass "
                "keep_loadable=False; then save and load the model with pruneframe.state_dict / load_state_dict",
                stacklevel=3)
