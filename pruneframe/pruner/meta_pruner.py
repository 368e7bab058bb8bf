"""``MetaPruner``: prune a whole model to a target ratio, ranked by an importance criterion.

One step works group by group (``DependencyGraph.get_all_groups``). In each group
the root layer's prunable channels are cut into *blocks* — channels that can
only go together: tied inside the root by the trace (grouped convolutions,
whole attention heads), by the user's ``out_channel_groups`` or, with
``num_heads``, by head. A block's score is the mean importance of its channels.
Blocks are then ranked inside a *scope*: each group alone (local pruning), all
groups together (``global_pruning``), groups of the same shape together
(``isomorphic``), or the layers of one ``pruning_ratio_dict`` entry together;
the lowest-scoring blocks go until each root layer (or the scope) reaches the
step's target ratio of its *original* width.

Chosen channels are kept as traced positions, so pruning one group never
shifts the indices chosen for another.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
from torch import nn

from ..errors import PruningError
from ..graph import DependencyGraph, Group
from ..importance import NothingToReadError, UnscorableGroupError
from ..progress import bar
from ..registry import get_registry
from ..runtime import heap_frozen
from ..wrappers import unwrap
from . import targets
from .arguments import (check_arguments, check_layers_of, check_remove_layers, expert_router_schedules, linear_scheduler,
                        parameter_pairs, ratio_dict_schedules, renamed_arguments, schedule, with_expert_roots,
                        with_whole_heads_variants)
from .selection import Candidate, Limits, choose_ranked, join_blocks, select
from .depth_steps import DepthSteps
from .query_heads import QueryHeadSteps
from .target_steps import TargetSteps
from .undone_groups import UndoneGroupSteps, prune_all_or_each


DEFAULT_ROOTS = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.rnn.RNNBase)


class _DefaultRatio(float):
    """``pruning_ratio``'s default: a float like any other, but one that tells "not given" from an explicit 0.5."""


_DEFAULT_RATIO = _DefaultRatio(0.5)

# A root layer's selection for one step: (layer, trigger, its channel space, the traced positions to remove)
_Chosen = tuple[Any, Callable[..., Any], Any, torch.Tensor]


class _HeadsTiedError(Exception):
    """Whole heads were asked for, but the traced ties join every head of the group into one block."""


class MetaPruner(DepthSteps, TargetSteps, QueryHeadSteps, UndoneGroupSteps):
    """Prune ``model`` with ``importance`` to ``pruning_ratio`` of its channels, in ``iterative_steps`` steps.

    Arguments follow Torch-Pruning's ``MetaPruner`` (``BasePruner``); see the module docstring for how
    channels are ranked. ``step()`` prunes; ``step(interactive=True)`` yields each ``Group`` for the
    caller to prune (``group.prune()``), inspect or skip.

    ``target_macs`` / ``target_params`` (a fraction of the original such as 0.5, or a count such as 2e9 or
    "1.5G") replace ``pruning_ratio``: each step searches the ratio that lands at or just under the step's
    share of the target (see ``pruneframe.pruner.targets``); ``target_result`` then says what was reached.
    ``progress=True`` shows progress bars on stderr (tracing, scoring, the search, pruning).
    ``prune_query_heads=True``: grouped-query attention loses query heads, the same number from every key/value
    group, instead of whole groups (see ``pruneframe.pruner.query_heads``). ``remove_layers=n`` (ranked by
    ``calibrate(batches)``) or ``=[block names]`` removes whole blocks first (see ``pruneframe.pruner.depth_steps``).
    ``expert_pruning_ratio=r``: every mixture-of-experts router (pruner ``acts_like`` ``ExpertRouter``) is a root, losing r of its experts.
    ``keep_loadable`` (default): a group whose prune the model's own format cannot state (a fix-up says so) stays whole,
    with a warning; False prunes it anyway (see ``pruneframe.pruner.undone_groups``).
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs: Any,
        importance: Callable[[Group], torch.Tensor],
        global_pruning: bool = False,
        pruning_ratio: float = _DEFAULT_RATIO,
        pruning_ratio_dict: dict[Any, float] | None = None,
        max_pruning_ratio: float = 1.0,
        iterative_steps: int = 1,
        iterative_pruning_ratio_scheduler: Callable[[float, int], Sequence[float]] = linear_scheduler,
        ignored_layers: Iterable[nn.Module] | None = None,
        round_to: int | None = None,
        isomorphic: bool = False,
        in_channel_groups: dict[nn.Module, int] | None = None,
        out_channel_groups: dict[nn.Module, int] | None = None,
        num_heads: dict[nn.Module, int] | None = None,
        prune_num_heads: bool = False,
        prune_head_dims: bool = True,
        head_pruning_ratio: float = 0.0,
        head_pruning_ratio_dict: dict[nn.Module, float] | None = None,
        customized_pruners: dict[type, Any] | None = None,
        unwrapped_parameters: Any = None,
        root_module_types: Iterable[type] = DEFAULT_ROOTS,
        forward_fn: Callable[[nn.Module, Any], Any] | None = None,
        output_transform: Callable[[Any], Any] | None = None,
        channel_groups: dict[nn.Module, int] | None = None,
        ch_sparsity: float | None = None,
        ch_sparsity_dict: dict[Any, float] | None = None,
        verify_prunes: bool | str = "auto",
        target_macs: float | str | None = None,
        target_params: float | str | None = None,
        progress: bool = False,
        prune_query_heads: bool = False,
        remove_layers: int | Sequence[str] | None = None,
        expert_pruning_ratio: float = 0.0,
        keep_loadable: bool = True,
    ):
        pruning_ratio, pruning_ratio_dict = renamed_arguments(pruning_ratio, pruning_ratio_dict, ch_sparsity, ch_sparsity_dict)
        check_arguments(pruning_ratio, max_pruning_ratio, head_pruning_ratio, iterative_steps, round_to, importance,
                        target_macs, target_params, isinstance(pruning_ratio, _DefaultRatio), prune_query_heads, keep_loadable)

        model = unwrap(model, pruning=True)  # torch.compile / DataParallel: prune the module they hold
        check_layers_of(model, ignored_layers, pruning_ratio_dict, num_heads)
        self.remove_layers = check_remove_layers(model, remove_layers)
        self.model = model
        self.example_inputs = example_inputs
        self.importance = importance
        self.global_pruning = global_pruning
        self.isomorphic = isomorphic
        self.pruning_ratio = pruning_ratio
        self.max_pruning_ratio = max_pruning_ratio
        self.iterative_steps = iterative_steps
        self.round_to = round_to
        self.ignored_layers = list(ignored_layers or [])
        self.root_module_types = with_expert_roots(root_module_types, expert_pruning_ratio)  # routers are roots if > 0
        self.out_channel_groups = {**(channel_groups or {}), **(out_channel_groups or {})}
        self.in_channel_groups = dict(in_channel_groups or {})
        self.num_heads = dict(num_heads or {})
        self.prune_num_heads = prune_num_heads
        self.prune_head_dims = prune_head_dims
        self.prune_query_heads = prune_query_heads
        self.keep_loadable = keep_loadable
        self._query_heads_original: dict[nn.Module, int] = {}  # query heads per key/value group before any step
        self._query_head_roots: set[nn.Module] = set()  # this step's roots pruned by query heads, not by whole groups
        self._earlier_history: list = []  # what graphs replaced after query-head prunes recorded
        self.current_step = 0
        self.left_whole: list[tuple[Group, str]] = []  # groups the steps left whole, and why (pruneframe.app.report reads it)
        self.progress = progress
        self.forward_fn = forward_fn
        self.output_transform = output_transform
        self.scheduler = iterative_pruning_ratio_scheduler
        self.target: targets.Target | None = None
        self.target_result: targets.TargetResult | None = None  # after a step with a target: what it reached
        self._target_ratio = 0.0  # the ratio the last target step used (the next one starts its search there)
        if target_macs is not None or target_params is not None:
            self.target = self._resolve_target(target_macs, target_params)

        self.per_step_pruning_ratio = schedule(iterative_pruning_ratio_scheduler, pruning_ratio, iterative_steps)
        self.per_step_head_pruning_ratio = schedule(iterative_pruning_ratio_scheduler, head_pruning_ratio, iterative_steps)
        self.pruning_ratio_dict, self._layer_scope = ratio_dict_schedules(
            model, pruning_ratio_dict, iterative_pruning_ratio_scheduler, iterative_steps, global_pruning)
        self.head_pruning_ratio_dict = {m: schedule(iterative_pruning_ratio_scheduler, r, iterative_steps)
                                        for m, r in (head_pruning_ratio_dict or {}).items()}

        customized_pruners = dict(customized_pruners or {})
        if prune_num_heads:  # a layer pruner that ties head positions by default may offer a whole-heads variant
            customized_pruners = with_whole_heads_variants(model, self.num_heads, customized_pruners)
        self._customized_pruners = customized_pruners
        self._unwrapped_parameters = parameter_pairs(unwrapped_parameters)
        self._verify_prunes = verify_prunes
        with bar("tracing the model", total=1, enabled=progress) as tracing:
            self.DG = self._trace_graph()
            tracing.update()
        for held, more in zip((self.pruning_ratio_dict, self._layer_scope), expert_router_schedules(
                self.DG, expert_pruning_ratio, pruning_ratio_dict, iterative_pruning_ratio_scheduler, iterative_steps)):
            held.update(more)
        # Widths before any step: targets are ratios of these, so iterative steps do not compound.
        self._original: dict[nn.Module, int] = {m: node.out_space.size for m, node in self.DG.module2node.items()
                                                if node.out_space is not None}
        self._head_dims = {m: self._original[m] // h for m, h in self.num_heads.items()  # so num_heads follows whole heads
                           if m in self._original and h > 0 and self._original[m] % h == 0}
        self._whole_heads: set[nn.Module] = set()  # layers whose heads were scored as whole heads this step

    # --- public API ---------------------------------------------------------------------
    def step(self, interactive: bool = False) -> Iterator[Group] | None:
        """Prune one step; with ``interactive`` return a generator of the groups instead (prune them yourself)."""
        self._remove_pending_layers()  # remove_layers: the first step starts with it, in either mode
        self.current_step += 1
        self.left_whole = []  # this step's: a group left whole before is scored again, and reported again if it stays
        if interactive:
            return self._interactive_groups()
        self._prune_query_heads()
        chosen = self._plan_step()
        with heap_frozen(), bar("pruning groups", total=len(chosen), enabled=self.progress) as pruning:
            # one run of the model checks the whole step; a group that breaks the model or its format stays whole
            failed = prune_all_or_each(self.DG, lambda: self._groups_of(chosen), self.keep_loadable, pruning.update)
        self._leave_whole(failed)
        self._update_num_heads()
        if self.target is not None:
            self._check_target_reached()
        return None

    def calibrate(self, batches: Iterable[Any], forward_fn: Callable[[nn.Module, Any], Any] | None = None,
                  loss_fn: Callable[[nn.Module, Any], torch.Tensor] | None = None, progress: bool | None = None) -> int:
        """Run ``batches`` (tensors, tuples or dicts, like ``example_inputs``) to feed a data-driven importance.

        ``ActivationImportance`` collects activation statistics (its earlier ones are replaced);
        ``TaylorImportance`` and ``HessianImportance`` need ``loss_fn(model, batch) -> loss`` and accumulate
        gradients over every batch (Taylor's land in ``.grad``, replacing what was there). The model runs in eval
        mode and is otherwise left as it was; under ``torch.distributed`` the statistics are summed over the
        ranks. ``progress`` (default: the pruner's) shows a bar. Returns the number of batches run. With ``remove_layers=n``
        it ranks the blocks too. See ``pruneframe.pruner.calibration`` and ``depth_steps``.
        """
        return self._calibrate(batches, forward_fn, loss_fn, progress)

    def _interactive_groups(self) -> Iterator[Group]:
        yield from self._query_head_groups()
        yield from self._groups_of(self._plan_step())
        self._update_num_heads()

    def _update_num_heads(self) -> None:
        """``num_heads[layer]``: the heads left, for layers that lost whole heads (their head width is unchanged)."""
        for module in self._whole_heads:
            node = self.DG.module2node.get(module)
            if module in self._head_dims and node is not None and node.out_space is not None:
                self.num_heads[module] = node.out_space.current_size // self._head_dims[module]
        self._whole_heads.clear()

    def estimate_importance(self, group: Group) -> torch.Tensor:
        return self.importance(group)

    def get_target_pruning_ratio(self, module: nn.Module, step: int | None = None) -> float:
        step = self.current_step if step is None else step
        return min(self.pruning_ratio_dict.get(module, self.per_step_pruning_ratio)[step], self.max_pruning_ratio)

    def get_target_head_pruning_ratio(self, module: nn.Module, step: int | None = None) -> float:
        step = self.current_step if step is None else step
        return min(self.head_pruning_ratio_dict.get(module, self.per_step_head_pruning_ratio)[step], 1.0)

    def pruning_history(self) -> list:
        return self._graph_history(self._earlier_history + self.DG.pruning_history())

    def reset(self) -> None:
        self.current_step = 0

    def update_regularizer(self) -> None:
        """Sparse-training pruners refresh their groups here; the plain pruner has none."""

    def regularize(self, model: nn.Module, *args: Any, **kwargs: Any) -> None:
        """Sparse-training pruners add their penalty's gradient here; the plain pruner adds none."""

    # --- one step ------------------------------------------------------------------------
    def _plan_step(self) -> list[_Chosen]:
        """This step's selection: every root layer with the traced positions of the channels it loses."""
        if self.current_step > self.iterative_steps:
            warnings.warn(f"step {self.current_step} is past iterative_steps={self.iterative_steps}: nothing is pruned",
                          stacklevel=4)
            return []
        candidates = self._step_candidates()
        if self.target is not None:
            found = self.target_result = self._search(candidates)
            self._target_ratio = found.lower_ratio
            candidates = self._with_ratio(candidates, found.ratio, found.lower_ratio, found.layers_at_ratio)
        return self._choose([c for c, _ in candidates])

    def _step_candidates(self) -> list[tuple[Candidate, bool]]:
        """Every group of this step scored, with whether its ratio is the model-wide one (a target may change it)."""
        candidates, unscored, tied_heads = [], [], []
        groups = self._all_groups()  # drawn one at a time, each let go once scored (a 70B model's groups are big)
        with bar("scoring groups", total=None, enabled=self.progress) as scoring:
            for group in groups:
                try:
                    found = self._candidate(group)
                except NothingToReadError as exc:  # e.g. BN scales for a group without batch norm: it stays whole
                    unscored.append(str(exc))
                    self.left_whole.append((group, f"the importance cannot score it: {exc}"))
                    continue
                except _HeadsTiedError as exc:
                    tied_heads.append(str(exc))
                    self.left_whole.append((group, f"prune_num_heads cannot remove any of its heads, the trace ties them together: {exc}"))
                    continue
                finally:
                    scoring.update()
                if found is not None:
                    candidates.append(found)
        if unscored:
            warnings.warn(f"{len(unscored)} group(s) left whole, the importance cannot score them: " + "; ".join(unscored),
                          stacklevel=4)
        if tied_heads:
            warnings.warn(
                f"{len(tied_heads)} group(s) left whole, prune_num_heads cannot remove any of their heads: "
                + "; ".join(tied_heads) + ". The trace ties channels of all their heads together: the code reshapes "
                "with a stored head count rather than -1, so only the head width may change (timm's Attention), or "
                "every head shares one key/value head; prune head widths instead (prune_num_heads=False, "
                "prune_head_dims=True)",
                stacklevel=4)
        return candidates

    def _choose(self, candidates: list[Candidate]) -> list[_Chosen]:
        """The channels each candidate loses: ranked within its scope (one group, all, same shape, a ratio-dict entry)."""
        by_scope: dict[str, list[Candidate]] = {}
        for c in candidates:
            by_scope.setdefault(c.scope, []).append(c)
        limits = Limits(self.max_pruning_ratio, self.round_to)
        chosen: list[tuple[Candidate, torch.Tensor]] = []
        for scope, members in by_scope.items():
            if len(members) == 1 or scope.startswith("local"):
                chosen += [(c, select(c, limits.target_cut(c))) for c in members]
            else:
                chosen += choose_ranked(members, limits)
        return [(c.root, c.trigger, c.space, traced) for c, traced in chosen if traced.numel()]

    def _groups_of(self, chosen: list[_Chosen], graph: DependencyGraph | None = None) -> Iterator[Group]:
        """The groups that remove the chosen channels, each drawn after the ones before it were pruned."""
        graph = graph or self.DG
        for root, trigger, space, traced in chosen:
            traced = traced[space.alive[traced]]  # an earlier group of this step may have taken some already
            if traced.numel() == 0:
                continue
            idxs = space.current_positions(traced).tolist()
            group = graph.get_pruning_group(root, trigger, sorted(idxs))
            problems = group.problems()
            if problems:
                if graph is self.DG:
                    self.left_whole.append((group, "; ".join(problems)))
                warnings.warn(f"skipping a group rooted at {graph.module2node[root].name}: {'; '.join(problems)}", stacklevel=4)
                continue
            yield group

    def _all_groups(self) -> Iterator[Group]:
        groups = self.DG.groups_one_at_a_time(ignored_layers=self.ignored_layers, root_module_types=self.root_module_types)
        return (g for g in groups if g.root.module not in self._query_head_roots)

    def _candidate(self, group: Group) -> tuple[Candidate, bool] | None:
        node, space = group.root, group.root_space
        root, trigger = node.module, group[0].dep.trigger
        root_idxs = torch.as_tensor(group.root_idxs, dtype=torch.long)
        try:
            scores = self.estimate_importance(group)
        except (UnscorableGroupError, PruningError):
            raise
        except Exception as exc:  # a criterion's own failure: name it and its plugin; nothing was pruned yet
            raise PruningError(
                f"the importance {self._criterion()} failed on the group of {node.name}: {type(exc).__name__}: {exc}. "
                "Scores are computed before anything is pruned: the model is as it was."
            ) from exc
        if scores is None:
            return None
        scores = torch.as_tensor(scores, dtype=torch.float64).flatten().cpu()
        if scores.numel() != root_idxs.numel():
            raise PruningError(
                f"the importance {type(self.importance).__name__} gave {scores.numel()} scores for a group whose root "
                f"{node.name} has {root_idxs.numel()} prunable channels: it must give one score per root channel"
            )
        if not bool(torch.isfinite(scores).all()):
            raise PruningError(f"the importance {type(self.importance).__name__} gave non-finite scores for {node.name}")
        labels, heads_mode = self._block_labels(group)
        if labels is None:
            return None
        if heads_mode:
            self._whole_heads.update(dep.target.module for dep, _ in group if dep.target.module in self.num_heads)
        counts = torch.bincount(labels)
        block_scores = torch.zeros(counts.numel(), dtype=torch.float64).index_add_(0, labels, scores) / counts
        ratio = self._head_ratio(group) if heads_mode else self.get_target_pruning_ratio(root)
        model_wide = not heads_mode and root not in self.pruning_ratio_dict
        return Candidate(root, trigger, space, space.original_positions(root_idxs), labels, counts.tolist(), block_scores,
                         self._original.get(root, space.size), ratio, self._scope_of(group, root, node.name)), model_wide

    def _criterion(self) -> str:
        """The importance criterion's class, and the plugin that registered it where one did."""
        cls = type(self.importance)
        plugin = next((e.plugin for e in get_registry().importances if e.factory is cls), None)
        return f"{cls.__name__} (plugin {plugin!r})" if plugin else cls.__name__

    def _block_labels(self, group: Group) -> tuple[torch.Tensor | None, bool]:
        """For each root index the block it can only go with (numbered from 0), and whether blocks are whole heads.

        Traced ties come first; then, for every layer of the group whose output
        channels have ``out_channel_groups`` or ``num_heads`` declared, position j
        of each part goes together (channel groups, head dims) or each part goes
        whole (heads, with ``prune_num_heads``), mapped onto the root's indices.
        None: neither the heads of a declared layer nor their widths may change.
        """
        labels = group.root_block_labels()
        heads_mode = False
        whole_heads: list[str] = []
        keys: list[torch.Tensor] = []
        for member in group.members():
            module = member.layer
            if member.kind != "out" or not (module in self.out_channel_groups or module in self.num_heads):
                continue
            width = member.space.current_size
            rules = []
            if module in self.out_channel_groups:
                rules.append((self.out_channel_groups[module], False))
            heads = self.num_heads.get(module)
            if heads:
                if self.prune_num_heads and self.get_target_head_pruning_ratio(module) > 0:
                    rules.append((heads, True))
                    heads_mode = True
                elif self.prune_head_dims:
                    rules.append((heads, False))
                else:
                    return None, False
            for parts, whole in rules:
                if whole:
                    whole_heads.append(f"{member.node.name} ({parts} heads)")
                if width % parts:
                    raise ValueError(f"{member.node.name} has {width} output channels, which {parts} "
                                     f"{'heads' if module in self.num_heads else 'channel groups'} do not divide")
                size = width // parts
                first = member.first_channel_per_root()
                channel = member.idxs[first.clamp(min=0)]
                keys.append(torch.where(first >= 0, (channel // size) if whole else (channel % size), -1))
        if keys:
            labels = join_blocks(labels, keys)
        if heads_mode and int(labels.max()) == 0:  # the trace ties channels of different heads: every head goes or none
            raise _HeadsTiedError(", ".join(whole_heads))
        return labels, heads_mode

    def _head_ratio(self, group: Group) -> float:
        """The head pruning ratio of the group's attention layer(s) (the largest, if several are declared)."""
        return max(self.get_target_head_pruning_ratio(dep.target.module) for dep, _ in group if dep.target.module in self.num_heads)

    def _scope_of(self, group: Group, root: Any, name: str) -> str:
        for dep, _ in group:
            if dep.target.module in self._layer_scope and dep.kind == "out":
                return self._layer_scope[dep.target.module]
        if self.isomorphic and self.global_pruning:
            return "iso:" + "|".join(f"{type(d.target.module).__name__}.{d.kind}" for d, _ in group)
        if self.global_pruning:
            return "global"
        return f"local:{name}"
