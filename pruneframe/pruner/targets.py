"""Pruning to a budget of MACs or parameters: the pruning ratio that lands at, or just under, the target.

MACs and parameters after a prune depend only on the pruned shapes; which channels go is decided by the
importance scores, computed once per step. So the search never touches the real weights: it prunes a
*shape twin* of the model -- a copy whose tensors are on the meta device (no memory, no arithmetic),
traced once per step -- with the selection a trial ratio gives, counts MACs and parameters on shapes, and
undoes that prune. Each trial is a prune of the twin like the real one (same groups, same rounding, same
blocks), so the count is exact; trials whose selection repeats an earlier one are not counted again.
A bracketed search over the ratio (interpolation kept inside the bracket) finds the smallest ratio whose
counts are at or under the targets; the real model is then pruned once with it.

A target is a fraction of the original (``0.5``) or an absolute count (``2e9``, ``"1.5G"``, ``"300M"``).
With several iterative steps, step k aims at ``original - (original - target) * s_k`` where ``s`` is the
ratio scheduler's shape (linear by default), so the last step lands at the target.

Example::

    pruner = tp.pruner.MetaPruner(model, x, tp.importance.MagnitudeImportance(p=2), target_macs=0.5)
    pruner.step()
    print(pruner.target_result)   # ratio found, MACs and parameters reached against the target

    found = tp.pruner.ratio_for_target(model, x, tp.importance.MagnitudeImportance(p=2), target_macs="1.5G")
    found.ratio                   # the model itself is not pruned
"""
from __future__ import annotations

import contextlib
import copy
import math
import re
import warnings
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

import attrs
import torch
from torch import nn

from ..graph import DependencyGraph
from ..runtime import map_tensors
from ..utils import count_ops_and_params
from .undone_groups import prune_all_or_each

if TYPE_CHECKING:
    from ..graph.node import Space

_SUFFIXES = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
_COUNT = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([kmgt]?)\s*$", re.IGNORECASE)


class TargetError(ValueError):
    """A target that cannot be met or makes no sense: the message names it, what is reachable and what to pass instead."""


def parse_count(value: Any, name: str = "target") -> float:
    """``0.5``, ``2e9``, ``"1.5G"``, ``"300M"``, ``"20k"`` as a number (a fraction or a count; see ``absolute_target``)."""
    if isinstance(value, bool):
        raise TargetError(f"{name}={value!r}: give a fraction of the original (0 < x < 1) or a count such as 2e9, 1.5G or 300M")
    if isinstance(value, (int, float)):
        number = float(value)
    else:
        match = _COUNT.match(str(value))
        if match is None:
            raise TargetError(f"{name}={value!r}: give a fraction of the original (0 < x < 1) or a count such as 2e9, 1.5G or 300M")
        number = float(match.group(1)) * _SUFFIXES[match.group(2).lower()]
    if not math.isfinite(number) or number <= 0:
        raise TargetError(f"{name}={value!r}: it must be positive: a fraction of the original (0 < x < 1) or a count such as 2e9")
    return number


def absolute_target(value: Any, original: int, name: str, unit: str) -> int:
    """The target as a count: a fraction (0 < x < 1) of ``original``, else the count itself, which must be below ``original``."""
    number = parse_count(value, name)
    if number < 1:
        return int(number * original)
    if number >= original:
        raise TargetError(f"{name}={value!r}: the model has {format_count(original)} {unit} already, so there is nothing to prune; "
                          f"give a smaller count, or a fraction of the original such as 0.5")
    return int(number)


def format_count(n: float) -> str:
    """A count the way a person reads it: 1.8141 G, 11.6895 M, 5.0 k."""
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.4f} {suffix}"
    return f"{int(n)}"


@attrs.frozen
class Target:
    """Absolute MACs and/or parameter budgets (None: no budget of that kind) and the model's counts before pruning."""

    macs: int | None
    params: int | None
    original_macs: int
    original_params: int

    def met(self, macs: int, params: int) -> bool:
        return (self.macs is None or macs <= self.macs) and (self.params is None or params <= self.params)

    def excess(self, macs: int, params: int) -> float:
        """How far above the budgets (relative; <= 0 when met): what the search drives to zero."""
        parts = [macs / self.macs - 1 if self.macs is not None else -math.inf,
                 params / self.params - 1 if self.params is not None else -math.inf]
        return max(parts)

    def at_step(self, progress: float) -> "Target":
        """The budget for a step ``progress`` (0..1) of the way from the original to this target."""
        def between(original: int, final: int | None) -> int | None:
            return None if final is None else int(original - (original - final) * progress)
        return attrs.evolve(self, macs=between(self.original_macs, self.macs), params=between(self.original_params, self.params))

    def describe(self) -> str:
        parts = []
        if self.macs is not None:
            parts.append(f"MACs <= {format_count(self.macs)} ({self.macs / self.original_macs:.1%} of the original)")
        if self.params is not None:
            parts.append(f"parameters <= {format_count(self.params)} ({self.params / self.original_params:.1%} of the original)")
        return " and ".join(parts)


@attrs.frozen
class TargetResult:
    """What a target search found, and the MACs and parameters it gives, against the budget it was for.

    ``ratio`` is the smallest uniform pruning ratio that meets the target. Where the layers' channel
    counts all step at once (equal widths), the step lands closer by pruning the first ``layers_at_ratio``
    of the ``layers`` model-wide root layers at ``ratio`` and the rest at ``lower_ratio`` (one channel,
    block or ``round_to`` less each); ``macs`` and ``params`` are what the step gives.
    """

    ratio: float
    macs: int
    params: int
    target: Target
    probes: int  # trial prunes of the shape twin that were counted
    lower_ratio: float
    layers_at_ratio: int
    layers: int

    @property
    def met(self) -> bool:
        return self.target.met(self.macs, self.params)

    def __str__(self) -> str:
        t = self.target
        digits = 4 if self.layers_at_ratio == self.layers else 6  # enough to tell the two ratios apart
        mixed = (f" ({self.lower_ratio:.{digits}f} for {self.layers - self.layers_at_ratio} of {self.layers} layers)"
                 if self.layers_at_ratio < self.layers else "")
        return (f"pruning ratio {self.ratio:.{digits}f}{mixed} for {t.describe()}: MACs {format_count(self.macs)} "
                f"({self.macs / t.original_macs:.1%} of the original), parameters {format_count(self.params)} "
                f"({self.params / t.original_params:.1%} of the original); {self.probes} shape-only trial prune(s)")


class _Undo(Exception):
    """Raised inside ``ShapeTwin.trial`` to undo the trial's prunes."""


def meta_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose parameters and buffers are on the meta device: same structure and shapes, no data.

    Tied parameters stay tied; nothing of the original is copied but its structure (and small plain attributes).
    """
    memo: dict[int, Any] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        if id(p) not in memo:
            memo[id(p)] = nn.Parameter(torch.empty(p.shape, dtype=p.dtype, device="meta"), requires_grad=p.requires_grad)
    for _, b in model.named_buffers(remove_duplicate=False):
        if id(b) not in memo:
            memo[id(b)] = torch.empty(b.shape, dtype=b.dtype, device="meta")
    return copy.deepcopy(model, memo)


def _shape_only_failure(what: str, exc: BaseException) -> TargetError:
    if isinstance(exc, ValueError) and exc.__cause__ is not None:  # "could not run ...: <why>. Pass inputs ...": the why
        exc = exc.__cause__
    return TargetError(
        f"a target needs the model to run on shapes alone (its tensors on the meta device) and {what} failed: "
        f"{type(exc).__name__}: {str(exc).rstrip('.')}. {RATIO_INSTEAD}"
    )


RATIO_INSTEAD = "Prune by a ratio instead (pruning_ratio=..., or --ratio on the command line)."


def check_shape_only(model: nn.Module, example_inputs: Any, forward_fn: Callable[[nn.Module, Any], Any] | None,
                     counts: tuple[int, int]) -> None:
    """Refuse, before anything is traced, a model whose meta-device copy cannot be counted or counts differently."""
    try:
        copy_ = meta_copy(model)
    except Exception as exc:  # a model deepcopy cannot copy (a lock, a handle): say so, and the way out
        raise _shape_only_failure("copying its structure (copy.deepcopy)", exc) from exc
    try:
        meta = count_ops_and_params(copy_, map_tensors(example_inputs, lambda t: t.to("meta")), forward_fn=forward_fn)[:2]
    except ValueError as exc:
        raise _shape_only_failure("running it", exc) from exc
    if tuple(meta) != tuple(counts):
        raise TargetError(f"the model's meta-device copy counts {meta[0]} MACs and {meta[1]} parameters, the model itself "
                          f"{counts[0]} and {counts[1]}: its code depends on values, so a shape-only search cannot be exact. "
                          + RATIO_INSTEAD)


def _remove_blocks(model: nn.Module, names: Sequence[str]) -> dict[str, str]:
    """Remove the blocks ``names`` from ``model`` (a twin: no checks, no fix-ups); each kept module's name now -> before."""
    from .depth import original_names, remove_positions

    before = {original: now for now, original in original_names(model).items()}
    positions: dict[str, list[int]] = {}
    for name in names:
        parent, _, key = name.rpartition(".")
        positions.setdefault(parent, []).append(list(model.get_submodule(parent)._modules).index(key))
    for parent in sorted(positions, key=lambda n: -n.count(".")):  # the innermost lists first, as remove_layers does
        remove_positions(model.get_submodule(parent), positions[parent])
    return {now: before[original] for now, original in original_names(model).items() if original in before}


class ShapeTwin:
    """A meta-device copy of a model, traced once, on which trial prunes are made, counted and undone.

    ``remove_blocks``: names of blocks (``"model.layers.3"``) the copy loses before it is traced, so a pending
    ``remove_layers`` is counted; the copy's layers are still found under the model's names (``counterpart``).
    """

    def __init__(self, model: nn.Module, example_inputs: Any, forward_fn: Callable[[nn.Module, Any], Any] | None = None,
                 output_transform: Callable[[Any], Any] | None = None,
                 unwrapped_parameters: list[tuple[nn.Parameter, int]] | None = None,
                 customized_pruners: dict[type, Any] | None = None, remove_blocks: Sequence[str] = ()):
        try:
            self.model = meta_copy(model)
        except Exception as exc:  # a model deepcopy cannot copy (a lock, a handle): say so, and the way out
            raise _shape_only_failure("copying its structure (copy.deepcopy)", exc) from exc
        model_names = _remove_blocks(self.model, remove_blocks) if remove_blocks else {}
        self.inputs = map_tensors(example_inputs, lambda t: t.to("meta"))
        self.forward_fn = forward_fn
        names = {id(p): name for name, p in model.named_parameters(remove_duplicate=False)}
        twin_names = {before: now for now, before in model_names.items()}
        pairs = [(self.model.get_parameter(_renamed(names[id(p)], twin_names)), dim) for p, dim in unwrapped_parameters or ()
                 if _renamed(names[id(p)], twin_names) is not None]
        try:
            with warnings.catch_warnings():  # what the trace reports was reported for the real model already
                warnings.simplefilter("ignore")
                self.graph = DependencyGraph().build_dependency(
                    self.model, self.inputs, forward_fn=forward_fn, output_transform=output_transform,
                    unwrapped_parameters=pairs or None, customized_pruners=customized_pruners, verbose=False,
                    verify_prunes=False)
        except Exception as exc:  # the model's own code needs values (data-dependent control flow, .item())
            raise _shape_only_failure("tracing it", exc) from exc
        self._nodes = {model_names.get(node.name, node.name): node for node in self.graph.module2node.values()}

    def knows(self, space: "Space") -> bool:
        """Whether the copy has the layer of ``space`` (a layer of a block it lost has none)."""
        return space.node.name in self._nodes

    def counterpart(self, space: "Space") -> "Space":
        """The twin's channel space for ``space`` of the real model (its layer, same kind, all channels alive)."""
        node = self._nodes.get(space.node.name)
        twin = node.space(space.kind) if node is not None else None
        if twin is None or twin.size != space.current_size:
            raise TargetError(f"the shape-only copy traced differently from the model at {space.node.name} "
                              "(the model's code depends on values, not only shapes). " + RATIO_INSTEAD)
        return twin

    def translate(self, chosen: list[tuple[Any, Any, "Space", torch.Tensor]]) -> list[tuple[Any, Any, "Space", torch.Tensor]]:
        """A selection ``(root layer, trigger, root space, traced positions)`` of the real model, as one of the twin."""
        out = []
        for _, trigger, space, traced in chosen:
            twin = self.counterpart(space)
            alive = traced[space.alive[traced]]
            out.append((twin.node.module, trigger, twin, space.current_positions(alive)))
        return out

    @contextlib.contextmanager
    def trial(self) -> Iterator[None]:
        """Prunes of the twin made inside are undone on leaving (nothing of the real model is touched)."""
        with warnings.catch_warnings():  # a group left whole was reported for the real step; trials stay quiet
            warnings.simplefilter("ignore")
            try:
                with self.graph.one_run_check():
                    yield
                    raise _Undo
            except _Undo:
                pass

    def prune(self, groups: Callable[[], Iterable[Any]], keep_loadable: bool) -> None:
        """Prune the twin's ``groups()`` inside a ``trial``, as the real step does: with ``keep_loadable``, a group whose
        prune the model's format cannot state (a fix-up says so) stays whole."""
        prune_all_or_each(self.graph, groups, keep_loadable)

    def count(self) -> tuple[int, int]:
        """MACs and parameters of the twin as it is now (shapes only)."""
        try:
            macs, params = count_ops_and_params(self.model, self.inputs, forward_fn=self.forward_fn)[:2]
        except ValueError as exc:
            raise _shape_only_failure("counting its MACs", exc) from exc
        return macs, params


def _renamed(parameter: str, twin_names: dict[str, str]) -> str | None:
    """A parameter's name in a twin that lost blocks (``twin_names``: module name then -> now); None: it was removed."""
    if not twin_names:
        return parameter
    owner, _, leaf = parameter.rpartition(".")
    now = twin_names.get(owner)
    return None if now is None else ".".join(part for part in (now, leaf) if part)


def search_ratio(measure: Callable[[float, float, int], tuple[int, int]], target: Target, low: float, high: float,
                 layers: int, on_probe: Callable[[float, int, int], None] | None = None) -> TargetResult:
    """The smallest ratio in [low, high] at which ``measure`` meets ``target``, refined to land just under it.

    ``measure(ratio, lower, split) -> (macs, params)`` counts a prune whose first ``split`` of the ``layers``
    model-wide layers use ``ratio`` and the others ``lower``. Counts fall as the ratio grows, in steps
    (channels are whole). Raises ``TargetError`` if even ``high`` misses the target. The ratio search stops
    once the bracket is narrower than 1e-4 or the counts are within 0.1% under the target; if they are not,
    a search over ``split`` closes the gap between the two ratios around the step.
    """
    seen: dict[tuple[float, float, int], tuple[int, int]] = {}

    def probe(ratio: float, lower: float | None = None, split: int = layers) -> tuple[int, int]:
        key = (ratio, ratio if lower is None else lower, split)
        if key not in seen:
            seen[key] = measure(*key)
            if on_probe is not None:
                on_probe(ratio, *seen[key])
        return seen[key]

    def result(ratio: float, counts: tuple[int, int], lower: float | None = None, split: int = layers) -> TargetResult:
        return TargetResult(ratio, *counts, target, len(seen), ratio if lower is None else lower, split, layers)

    hi_counts = probe(high)
    if not target.met(*hi_counts):
        raise TargetError(
            f"{target.describe()} cannot be reached: pruning as far as allowed (ratio {high:.3f}) leaves "
            f"{format_count(hi_counts[0])} MACs and {format_count(hi_counts[1])} parameters. Ask for less, prune fewer "
            "layers whole (ignored layers), or allow more (max_pruning_ratio)")
    lo_counts = probe(low)
    if target.met(*lo_counts):
        return result(low, lo_counts)
    lo, hi = low, high
    excess_lo, excess_hi = target.excess(*lo_counts), target.excess(*hi_counts)
    while hi - lo > 1e-4 and excess_hi < -1e-3:
        width = hi - lo
        # interpolate where the excess crosses zero, kept inside the middle half so the bracket always shrinks
        guess = lo + width * excess_lo / (excess_lo - excess_hi) if excess_lo != excess_hi else lo + width / 2
        ratio = min(max(guess, lo + width / 4), hi - width / 4)
        counts = probe(ratio)
        if target.met(*counts):
            hi, hi_counts, excess_hi = ratio, counts, target.excess(*counts)
        else:
            lo, excess_lo = ratio, target.excess(*counts)
    if excess_hi >= -1e-3 or layers < 2:
        return result(hi, hi_counts)
    # many layers step together at one ratio (equal widths): move them across the step one part at a time
    fewer, more, best = 0, layers, hi_counts
    while more - fewer > 1:
        split = (fewer + more) // 2
        counts = probe(hi, lo, split)
        if target.met(*counts):
            more, best = split, counts
        else:
            fewer = split
    return result(hi, best, lo, more)


def ratio_for_target(model: nn.Module, example_inputs: Any, importance: Callable[..., Any],
                     target_macs: Any = None, target_params: Any = None, **pruner_kwargs: Any) -> TargetResult:
    """The pruning ratio at which ``MetaPruner(model, example_inputs, importance, **pruner_kwargs)`` reaches the target(s).

    The model is traced and scored, never pruned. ``result.ratio`` can be passed as ``pruning_ratio``; for a
    one-step prune it gives exactly ``result.macs`` and ``result.params``. To prune to the target directly
    (iterative steps too), pass ``target_macs`` / ``target_params`` to ``MetaPruner`` itself.
    """
    from .meta_pruner import MetaPruner

    pruner = MetaPruner(model, example_inputs, importance, target_macs=target_macs, target_params=target_params, **pruner_kwargs)
    return pruner.search_target_ratio()


__all__ = ["ShapeTwin", "Target", "TargetError", "TargetResult", "absolute_target", "format_count", "meta_copy",
           "parse_count", "ratio_for_target", "search_ratio"]
