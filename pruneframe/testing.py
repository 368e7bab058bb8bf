"""Check that a prune is exact: the pruned model equals the original with the lost connections zeroed.

A structural prune of a network with no normalisation across the pruned
channels is exactly equivalent to zeroing, in the original model, the input
connections the pruned model lost. This module builds that masked reference
from a graph's pruning history and compares outputs in float64, so plugin
authors can test their own plugins the way pruneframe tests its own.

Example::

    from pruneframe.testing import assert_prune_equivalent, prune_random

    error = assert_prune_equivalent(model, torch.randn(2, 3, 32, 32), prune_random(ratio=0.3, seed=0))
"""
from __future__ import annotations

import copy
import random
from typing import Any, Callable

import torch
from torch import nn

from .errors import ModelStopsRunningError
from .graph import DependencyGraph
from .registry import Registry
from .runtime import default_forward, tensors_in

ROOT_NAME = "(model)"


def _cast_inputs(example_inputs: Any, dtype: torch.dtype) -> Any:
    if isinstance(example_inputs, torch.Tensor):
        return example_inputs.to(dtype) if example_inputs.is_floating_point() else example_inputs
    if isinstance(example_inputs, (tuple, list)):
        return type(example_inputs)(_cast_inputs(x, dtype) for x in example_inputs)
    if isinstance(example_inputs, dict):
        return {k: _cast_inputs(v, dtype) for k, v in example_inputs.items()}
    return example_inputs


def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every floating parameter and buffer random values (BN statistics too), so no channel is trivially zero."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if not t.is_floating_point():
                continue
            values = torch.rand(t.shape, generator=gen, dtype=torch.float64) * 2 - 1
            if name.endswith("running_var"):
                values = values.abs() + 0.5
            elif t.dim() > 1:
                values = values / max(1.0, float(t[0].numel()) ** 0.5)
            t.copy_(values.to(t.dtype))
    return model


def masked_reference(original: nn.Module, graph: DependencyGraph) -> nn.Module:
    """A copy of the unpruned ``original`` with every connection the prunes in ``graph`` removed set to zero.

    Consumers' inputs from pruned channels are zeroed (``mask_in_channels``) and
    pruned channels are silenced where they are produced (``mask_out_channels``),
    so pruned channels reach neither layers nor ops such as contractions and sums.
    """
    reference = copy.deepcopy(original)
    modules = dict(reference.named_modules())
    params = dict(reference.named_parameters())
    nodes = {node.name: node for node in graph.module2node.values()}
    for records in graph.pruning_history():
        for record in records:
            node = nodes[record.name]
            if node.kind == "parameter":
                with torch.no_grad():
                    params[record.name].index_fill_(node.pruning_dim, torch.tensor(record.traced, dtype=torch.long), 0)
                continue
            layer = modules["" if record.name == ROOT_NAME else record.name]
            traced = list(record.traced)
            if record.kind == "in" and not node.in_out_coupled:
                node.pruner.mask_in_channels(layer, traced)
            elif record.kind == "out":
                node.pruner.mask_out_channels(layer, traced)
    return reference


def _outputs(model: nn.Module, inputs: Any, forward_fn: Callable[[nn.Module, Any], Any] | None) -> list[torch.Tensor]:
    with torch.no_grad():
        return [t for t in tensors_in((forward_fn or default_forward)(model, inputs)) if t.is_floating_point()]


def relative_error(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """The largest |a - b| / max|b| over matching tensors."""
    if len(a) != len(b):
        raise AssertionError(f"the models return {len(a)} and {len(b)} tensors")
    worst = 0.0
    for x, y in zip(a, b):
        if x.shape != y.shape:
            raise AssertionError(f"output shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}")
        scale = float(y.abs().max()) if y.numel() else 0.0
        diff = float((x - y).abs().max()) if y.numel() else 0.0
        worst = max(worst, diff / scale if scale > 0 else diff)
    return worst


def prune_random(ratio: float = 0.3, seed: int = 0, ignored_layers: Callable[[nn.Module], list[nn.Module]] | None = None,
                 **group_kwargs: Any) -> Callable[[DependencyGraph, nn.Module], int]:
    """A prune step for ``check_prune_equivalence``: every group loses ``ratio`` of its channels, chosen at random.

    Channels tied inside a group's root layer go together. Returns the number of groups pruned.
    """

    def step(graph: DependencyGraph, model: nn.Module) -> int:
        rng = random.Random(seed)
        ignored = ignored_layers(model) if ignored_layers else []
        done = 0
        for group in list(graph.get_all_groups(ignored_layers=ignored, **group_kwargs)):
            blocks = group.root_blocks()
            rng.shuffle(blocks)
            want = int(len(group.root_idxs) * ratio)
            chosen: list[int] = []
            for block in blocks:
                if len(chosen) + len(block) > want:
                    continue
                chosen += block
            root = group[0].dep
            while chosen:
                final = graph.get_pruning_group(root.target.module, root.trigger, sorted(chosen))
                if graph.check_pruning_group(final):
                    try:
                        final.prune()
                    except ModelStopsRunningError:
                        break  # the model's code fixes these sizes: this group stays whole
                    done += 1
                    break
                chosen = chosen[: len(chosen) // 2]  # it would empty some coupled layer: take less
        return done

    return step


def check_prune_equivalence(
    model: nn.Module,
    example_inputs: Any,
    prune: Callable[[DependencyGraph, nn.Module], Any],
    *,
    seed: int = 0,
    forward_fn: Callable[[nn.Module, Any], Any] | None = None,
    randomize: bool = True,
    registry: Registry | None = None,
    **build_kwargs: Any,
) -> tuple[float, nn.Module, DependencyGraph]:
    """Prune a float64 copy of ``model`` with ``prune(graph, copy)`` and compare it with the masked original.

    Returns (relative error, pruned copy, its graph). ``model`` itself is not changed.
    ``registry`` (from ``pruneframe.registry.build_registry``) checks
    plugins that are not installed; by default the installed ones are used.
    """
    original = copy.deepcopy(model).to(torch.float64).eval()
    if randomize:
        randomize_(original, seed)
    inputs = _cast_inputs(example_inputs, torch.float64)
    pruned = copy.deepcopy(original)
    graph = DependencyGraph(registry=registry).build_dependency(pruned, inputs, forward_fn=forward_fn, **build_kwargs)
    prune(graph, pruned)
    reference = masked_reference(original, graph)
    error = relative_error(_outputs(pruned, inputs, forward_fn), _outputs(reference, inputs, forward_fn))
    return error, pruned, graph


def assert_prune_equivalent(model: nn.Module, example_inputs: Any, prune: Callable[[DependencyGraph, nn.Module], Any],
                            tolerance: float = 1e-9, **kwargs: Any) -> float:
    """``check_prune_equivalence``, raising AssertionError if the error reaches ``tolerance`` or nothing was pruned."""
    error, pruned, graph = check_prune_equivalence(model, example_inputs, prune, **kwargs)
    if not graph.pruning_history():
        raise AssertionError("nothing was pruned, so nothing was checked")
    if not error < tolerance:
        raise AssertionError(f"pruned model differs from the masked original: relative error {error:.3e} >= {tolerance:.0e}")
    return error
