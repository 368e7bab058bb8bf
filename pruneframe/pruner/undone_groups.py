"""Pruning a step's groups all at once, and one by one when that is undone: what MetaPruner's step and its target
search's trials share.

A step's groups are pruned in one ``DependencyGraph.one_run_check`` block. When the block is undone — the model no
longer runs on the example inputs (``ModelStopsRunningError``), or with ``keep_loadable`` a fix-up says the
model's own format cannot state the result (``UnloadableError``: BERT's config derives the head width from the
hidden size) — ``prune_all_or_each`` prunes each group in a block of its own and returns the ones that failed.
MetaPruner leaves those whole, records them in ``pruner.left_whole`` with the reason, and names them in one
warning per kind (``UndoneGroupSteps``); the rest of the step is pruned.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable, Iterable

from ..errors import ModelStopsRunningError, UnloadableError

_SHOWN = 6
Undone = (ModelStopsRunningError, UnloadableError)


def prune_all_or_each(graph: Any, groups: Callable[[], Iterable[Any]], keep_loadable: bool,
                      pruned: Callable[[], Any] | None = None) -> list[tuple[Any, Exception]]:
    """Prune ``groups()`` in one checked block of ``graph``; if it is undone, each in its own. Returns what stayed whole.

    ``groups`` is called again for the second pass (groups are drawn afresh from the restored graph); ``pruned`` is
    called after each group of the first pass (a progress bar).
    """
    try:
        with graph.one_run_check(keep_loadable):
            for group in groups():
                group.prune()
                if pruned is not None:
                    pruned()
        return []
    except Undone:
        failed = []
        for group in groups():
            try:
                with graph.one_run_check(keep_loadable):
                    group.prune()
            except Undone as exc:
                failed.append((group, exc))
        return failed


def _layers(group: Any) -> str:
    names = [dep.target.name for dep, _ in group]
    return ", ".join(names[:_SHOWN]) + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")


def _detail(exc: Exception) -> str:
    """The reason inside the parentheses of an undone prune's message."""
    return str(exc).split("(", 1)[-1].split("); it was undone")[0]


class UndoneGroupSteps:
    """The reporting part of ``MetaPruner`` for groups ``prune_all_or_each`` left whole (it uses ``left_whole``)."""

    def _leave_whole(self, failed: list[tuple[Any, Exception]]) -> None:
        """Record each group that failed its check as left whole, and warn once per kind of failure."""
        stops, unloadable = [], []
        for group, exc in failed:
            if isinstance(exc, ModelStopsRunningError):
                stops.append(f"{_layers(group)} ({_detail(exc)})")
                self.left_whole.append((group, f"a size the model's code keeps: after pruning it the model no longer runs "
                                               f"({_detail(exc)})"))
            else:
                unloadable.append(f"{_layers(group)} ({_detail(exc)})")
                self.left_whole.append((group, f"the model's own format could not state it ({_detail(exc)})"))
        if stops:
            warnings.warn(
                f"{len(stops)} group(s) left whole: after pruning them the model no longer runs on the example inputs "
                "(or slices them wrongly), its code keeps a size they change: " + "; ".join(stops) + ". The rest of the "
                "step was pruned; keep these layers out (ignored_layers) to silence this, or make the code read the size "
                "from the tensor",
                stacklevel=3)
        if unloadable:
            warnings.warn(
                f"{len(unloadable)} group(s) left whole so that the model stays loadable from its own format: "
                + "; ".join(unloadable) + ". The rest of the step was pruned. To prune them anyway pass "
                "keep_loadable=False; then save and load the model with pruneframe.state_dict / load_state_dict",
                stacklevel=3)
