"""``trace``: run a model once under the recorder and return its channel couplings.

The pass runs on fake tensors (shapes only) when the model allows, and on the
real example inputs otherwise; the two give the same graph. Either way the
model is left exactly as it was (``pruneframe.runtime``).
"""
from __future__ import annotations

import logging
import os
import warnings
from typing import Any, Callable, Iterable

import torch
from torch import nn
from torch.utils._python_dispatch import _disable_current_modes

from ..errors import PruningError, UnsupportedOpWarning
from ..graph.node import Node
from ..registry import Registry
from ..runtime import Forward, default_forward, describe_inputs, inputs_hint, model_run, tensors_in
from . import labels as L
from .recorder import Recorder, TraceResult
from .shared import tie_shared

logger = logging.getLogger(__name__)

ENV_TRACE = "PRUNEFRAME_TRACE"  # "auto" (default): shapes only when possible; "real": always on real tensors


def find_leaves(model: nn.Module, registry: Registry, customized: dict[type, Any]) -> dict[nn.Module, Node]:
    """The outermost modules some pruner serves, as nodes: the tracer treats each as one layer."""
    leaves: dict[nn.Module, Node] = {}
    inside_leaf: set[int] = set()
    for name, module in model.named_modules():
        if id(module) in inside_leaf:
            continue
        found = registry.resolve(type(module), customized)
        if found is None:
            continue
        leaves[module] = Node(name or "(model)", module, found.pruner, found.plugin)
        for sub in module.modules():
            if sub is not module:
                inside_leaf.add(id(sub))
    return leaves


def raw_parameters(model: nn.Module, leaves: dict[nn.Module, Node],
                   unwrapped: Iterable[tuple[nn.Parameter, int]] | None) -> dict[int, tuple[str, nn.Parameter, int | None]]:
    """Parameters no leaf owns (class tokens, position embeddings), by id: name, parameter, and the dim to prune if given."""
    owned = {id(p) for m in leaves for p in m.parameters()}
    explicit = {id(p): dim for p, dim in (unwrapped or ())}
    raw: dict[int, tuple[str, nn.Parameter, int | None]] = {}
    for pname, p in model.named_parameters():
        if id(p) not in owned:
            raw[id(p)] = (pname, p, explicit.get(id(p)))
    for p, dim in unwrapped or ():
        if id(p) not in raw:
            raw[id(p)] = (f"<unwrapped {tuple(p.shape)}>", p, dim)
    return raw


def trace(
    model: nn.Module,
    example_inputs: Any,
    registry: Registry,
    customized: dict[type, Any],
    forward_fn: Callable[[nn.Module, Any], Any] | None = None,
    output_transform: Callable[[Any], Any] | None = None,
    unwrapped_parameters: Iterable[tuple[nn.Parameter, int]] | None = None,
    check_slices: bool = True,
) -> TraceResult:
    """Run ``model`` once and record its channel couplings. The model is left as it was.

    ``check_slices``: prunes will be run-checked, so slices along channels are recorded for that check rather than
    pinning their channels (``OpContext.slice_follows_prunes``).
    """
    leaves = find_leaves(model, registry, customized)
    raw_params = raw_parameters(model, leaves, unwrapped_parameters)

    forward = forward_fn or default_forward
    args = (model, example_inputs, registry, leaves, raw_params, forward, output_transform, check_slices)
    try:
        recorder = _record_somehow(*args, eval_mode=False)
    except ValueError:
        if not any(m.training for m in model.modules()):
            raise
        # a model in training mode may not run on small example inputs (BatchNorm on one value per channel); the
        # graph of the same model in eval mode is the same, so trace that (the model keeps its training flags)
        for node in leaves.values():
            node.calls, node.out_space, node.in_space = 0, None, None
        recorder = _record_somehow(*args, eval_mode=True)
        logger.debug("traced %s in eval mode: it does not run on these inputs in training mode", type(model).__name__)

    for node in leaves.values():
        if node.calls == 0:  # never called: nothing is known of its channels, so they stay as they are
            node.out_space = node.out_space or recorder.allocate(node, "out", 0)
            node.in_space = node.in_space or recorder.allocate(node, "in", 0)
    tie_shared(recorder, leaves)
    if recorder.unsupported_ops:
        listed = ", ".join(f"{k} (x{v})" for k, v in sorted(recorder.unsupported_ops.items()))
        warnings.warn(
            f"pruneframe does not understand these ops, so channels that reach them are not pruned: {listed}. "
            "Write an op plugin (see docs/writing-plugins.md) to prune across them.",
            UnsupportedOpWarning,
            stacklevel=3,
        )
    edges = _joined(recorder.edges, torch.int32 if recorder.next_id < 2**31 else torch.long)  # ids fit: half the memory
    return TraceResult(recorder.nodes, recorder.spaces, recorder.next_id, edges, recorder.reasons, recorder.unsupported_ops,
                       "shapes" if recorder.shapes_only else "real", recorder.ties,
                       torch.unique(torch.cat(recorder.code_sized)) if recorder.code_sized else torch.empty(0, dtype=torch.long),
                       recorder.eval_mode, recorder.slices)


def _joined(pieces: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """The 2 x E edge pieces side by side, each freed once copied: one copy of them at a time, not two (a 70B graph's
    edges are some 250 MB)."""
    joined = torch.empty(2, sum(p.shape[1] for p in pieces), dtype=dtype)
    start = 0
    pieces.reverse()
    while pieces:
        piece = pieces.pop()
        joined[:, start:start + piece.shape[1]] = piece
        start += piece.shape[1]
    return joined


def _record_somehow(model: nn.Module, example_inputs: Any, registry: Registry, leaves: dict[nn.Module, Node],
                    raw_params: dict[int, tuple[str, nn.Parameter, int | None]], forward: Forward,
                    output_transform: Callable[[Any], Any] | None, check_slices: bool, eval_mode: bool) -> Recorder:
    """A recorded pass on fake tensors when the model allows, else on the real inputs (the same graph, slower)."""
    if os.environ.get(ENV_TRACE, "auto") != "real":
        try:
            return _record(model, example_inputs, registry, leaves, raw_params, forward, output_transform, True, eval_mode,
                           check_slices)
        except PruningError:
            raise
        except Exception as exc:  # the shapes-only pass cannot run this model (values needed, an op without a fake
            # kernel, data-dependent shapes): trace it for real instead, which gives the same graph, only slower
            logger.debug("shapes-only trace failed (%s: %s); tracing with real tensors", type(exc).__name__, exc)
            for node in leaves.values():
                node.calls, node.out_space, node.in_space = 0, None, None
    try:
        return _record(model, example_inputs, registry, leaves, raw_params, forward, output_transform, False, eval_mode,
                       check_slices)
    except PruningError:
        raise
    except Exception as exc:  # the model's own code failed on these inputs: say so, and what to pass
        raise ValueError(
            f"build_dependency could not run {type(model).__name__} on example_inputs={describe_inputs(example_inputs)}: "
            f"{type(exc).__name__}: {exc}. {inputs_hint(example_inputs)} The model was left as it was."
        ) from exc


def _record(model: nn.Module, example_inputs: Any, registry: Registry, leaves: dict[nn.Module, Node],
            raw_params: dict[int, tuple[str, nn.Parameter, int | None]], forward: Forward,
            output_transform: Callable[[Any], Any] | None, shapes_only: bool, eval_mode: bool = False,
            check_slices: bool = True) -> Recorder:
    """One forward pass under the recorder: on fake tensors (shapes only, no arithmetic) or on the real ones."""
    handles = []
    try:
        with model_run(model, example_inputs, shapes_only, eval_mode=eval_mode) as run:
            if shapes_only:  # the raw parameters the forward sees are their fake stand-ins
                raw_params = {id(run.fake_of_name[n]) if n in run.fake_of_name else key: (n, p, d)
                              for key, (n, p, d) in raw_params.items()}
            recorder = Recorder(registry, leaves, raw_params, run.real_of, shapes_only)
            recorder.eval_mode, recorder.check_slices = eval_mode, check_slices
            for module in leaves:
                handles.append(module.register_forward_pre_hook(recorder.leaf_pre, with_kwargs=True))
                handles.append(module.register_forward_hook(recorder.leaf_post, with_kwargs=True))
            with _disable_current_modes():  # labels are real tensors, made outside the fake mode
                model_input = recorder.reason_id("it comes from a model input")
                for t in tensors_in(run.inputs):
                    recorder.assign(t, L.constant(t.shape, model_input))
            with recorder:
                output = forward(model, run.inputs)
                finals = tensors_in(output)
                if output_transform is not None:
                    finals += tensors_in(output_transform(output))
                with _disable_current_modes():
                    for t in finals:
                        ids = recorder.lookup(t)
                        if ids is not None:
                            recorder.block(ids, "it reaches a model output")
    finally:
        for h in handles:
            h.remove()
    return recorder
