"""Query heads inside a key/value group: grouped-query attention losing query heads while every key/value head stays.

In the ordinary trace a key/value head repeated across its query heads (an
``expand`` + ``reshape``, ``repeat_interleave``, or attention with
``enable_gqa``) ties every channel of the group into one block: only whole
key/value groups can go. A query head alone can go too (its projection rows
and its output's columns), as long as every key/value group keeps the same
number of query heads, since the model's code repeats each key/value head a
uniform number of times.

``MetaPruner(..., prune_query_heads=True)`` finds those blocks with a second
trace of the model, made with the op handlers' ``query_heads_variant`` (an
attribute of an op handler function: the handler to use in this trace), in
which an operand repeated across the slices of a batched product is a copy
that stays. A root layer whose blocks there are finer than in the ordinary
graph, each ordinary block (a key/value group) holding the same number of
them, has query heads: each group loses its lowest-scoring ones, the same
number from every group, in one prune. Those roots are not also pruned by
whole groups in the same step. The stored sizes follow through the model's
fix-ups (the transformers plugin sets the group count from the pruned
shapes); a prune after which the model no longer runs is undone and left
whole like any other.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Iterator

import attrs
import torch
from ..errors import ModelStopsRunningError, PruningError, UnloadableError
from ..graph import DependencyGraph, Group
from ..importance import NothingToReadError
from ..registry import Registry

VARIANT = "query_heads_variant"


def query_head_registry(registry: Registry) -> Registry | None:
    """``registry`` with every op handler that offers a ``query_heads_variant`` replaced by it; None if none does."""
    entries = [attrs.evolve(e, handler=getattr(e.handler, VARIANT)) if callable(getattr(e.handler, VARIANT, None)) else e
               for e in registry.op_handlers]
    if all(a is b for a, b in zip(entries, registry.op_handlers)):
        return None
    return Registry(registry.plugins, registry.layer_pruners, entries, registry.hints, registry.fixups,
                    registry.importances, registry.failures)


def query_head_blocks(fine: torch.Tensor, coarse: torch.Tensor) -> list[list[int]] | None:
    """Per coarse block (a key/value group), its fine blocks (query heads); None unless every group holds the same number >= 2.

    ``fine`` and ``coarse`` label the same root indices; a fine block must lie inside one coarse block.
    """
    groups: dict[int, set[int]] = {}
    for f, c in zip(fine.tolist(), coarse.tolist()):
        groups.setdefault(c, set()).add(f)
    members = [sorted(v) for _, v in sorted(groups.items())]
    flat = [f for m in members for f in m]
    if len(flat) != len(set(flat)) or len({len(m) for m in members}) != 1 or len(members[0]) < 2:
        return None
    return members


class QueryHeadSteps:
    """The query-head part of ``MetaPruner`` (a mixin: it uses the pruner's graph, importance and ratios)."""

    def _trace_graph(self, registry: Registry | None = None) -> DependencyGraph:
        graph = DependencyGraph(registry=registry).build_dependency(
            self.model, self.example_inputs, forward_fn=self.forward_fn, output_transform=self.output_transform,
            unwrapped_parameters=self._unwrapped_parameters, customized_pruners=self._customized_pruners,
            verify_prunes=self._verify_prunes,
        )
        graph.ignored_layers = []
        return graph

    def _prune_query_heads(self) -> None:
        """Prune this step's query heads; a prune after which the model no longer runs, or (``keep_loadable``) that its
        format cannot state, is undone and left whole."""
        for graph, group in self._query_head_prunes():
            try:
                with graph.one_run_check(self.keep_loadable):
                    group.prune()
            except (ModelStopsRunningError, UnloadableError) as exc:
                names = ", ".join(dict.fromkeys(dep.target.name for dep, _ in group))
                why = "a size the model's code keeps" if isinstance(exc, ModelStopsRunningError) else "its format cannot state it"
                self.left_whole.append((group, f"{why}: {exc}"))
                warnings.warn(f"the query heads of {names} were left whole: {exc}", stacklevel=3)

    def _query_head_groups(self) -> Iterator[Group]:
        """This step's query-head prunes, one group per attention (``step(interactive=True)`` yields them)."""
        for _, group in self._query_head_prunes():
            yield group

    def _query_head_prunes(self) -> Iterator[tuple[DependencyGraph, Group]]:
        """This step's query-head groups with their graph; afterwards the ordinary graph is traced again."""
        self._query_head_roots = set()
        if not self.prune_query_heads or self.current_step > self.iterative_steps:
            return
        registry = query_head_registry(self.DG.registry)
        if registry is None:
            return
        fine_graph = self._trace_graph(registry)
        planned = [self._query_head_choice(g) for g in
                   fine_graph.get_all_groups(ignored_layers=self.ignored_layers, root_module_types=self.root_module_types)]
        yielded = False
        for found in planned:
            if found is None:
                continue
            root, trigger, idxs = found
            if not idxs:
                continue
            group = fine_graph.get_pruning_group(root, trigger, idxs)
            problems = group.problems()
            if problems:
                self.left_whole.append((group, "; ".join(problems)))
                warnings.warn(f"skipping the query heads of {fine_graph.module2node[root].name}: {'; '.join(problems)}",
                              stacklevel=4)
                continue
            self._whole_heads.update(dep.target.module for dep, _ in group if dep.target.module in self.num_heads)
            yielded = True
            yield fine_graph, group
        if yielded:  # the ordinary graph no longer matches the model: trace it again, keeping what it recorded
            self._earlier_history += self.DG.pruning_history() + fine_graph.pruning_history()
            self.DG = self._trace_graph()

    def _query_head_choice(self, fine: Group) -> tuple[Any, Any, list[int]] | None:
        """For a root with query heads: (root, trigger, the current indices to remove); None for any other root."""
        root, trigger = fine.root.module, fine[0].dep.trigger
        coarse = self.DG.get_pruning_group(root, trigger, fine.root_idxs)
        blocks = query_head_blocks(fine.root_block_labels(), coarse.root_block_labels())
        if blocks is None or sum(s.numel() for _, s in coarse.touched) <= sum(s.numel() for _, s in fine.touched):
            return None
        self._query_head_roots.add(root)
        per_group = len(blocks[0])
        original = self._query_heads_original.setdefault(root, per_group)
        ratio = self.get_target_pruning_ratio(root)
        keep = max(original - int(original * ratio), math.ceil(original * (1 - self.max_pruning_ratio)), 1)
        cut = per_group - keep
        if cut <= 0:
            return root, trigger, []
        try:
            scores = torch.as_tensor(self.estimate_importance(fine), dtype=torch.float64).flatten().cpu()
        except NothingToReadError as exc:
            self.left_whole.append((fine, f"the importance cannot score its query heads: {exc}"))
            return None
        if scores.numel() != len(fine.root_idxs) or not bool(torch.isfinite(scores).all()):
            raise PruningError(f"the importance {type(self.importance).__name__} gave {scores.numel()} scores (or non-finite "
                               f"ones) for the query heads of {fine.root.name}, which has {len(fine.root_idxs)} prunable "
                               "channels: it must give one finite score per root channel")
        labels = fine.root_block_labels()
        block_scores = torch.zeros(int(labels.max()) + 1, dtype=torch.float64).index_add_(0, labels, scores)
        block_scores /= torch.bincount(labels).to(torch.float64)
        gone = {b for group in blocks for b in sorted(group, key=lambda b: (float(block_scores[b]), b))[:cut]}
        idxs = torch.as_tensor(fine.root_idxs)[torch.tensor([int(b) in gone for b in labels])]
        return root, trigger, sorted(idxs.tolist())
