"""The pruning plan: what was removed from a model, so a fresh copy can be pruned the same way.

Every ``Group.prune()`` appends one step to the plan of the graph's model:
per layer (by its name in the model), whether outputs or inputs were pruned,
the indices (as they were at that moment), for a raw parameter the dimension,
and, for a layer pruned by a pruner registered on the graph
(``register_customized_layer``), its type name. Replaying the steps in order on
a freshly built, unpruned model of the same architecture gives the pruned
architecture; loading the weights then gives the pruned model. No class is
pickled, so a saved file loads wherever the model's own code does.

``state_dict(model)`` returns ``{"state_dict": ..., "pruning_plan": ...,
"attributes": ...}``; ``load_state_dict(fresh_model, state_dict=sd)`` replays
and loads (pass ``customized_pruners={MyLayer: MyPruner()}`` for layers pruned
by your own pruners). Replay checks the whole plan against the model first,
then applies it as one transaction, the same one ``Group.prune()`` uses: on
any error the model is left exactly as it was, and it is never copied. The
plan alone is readable JSON: ``plan_to_json`` / ``plan_from_json``.

Whole blocks removed from a layer list (``pruneframe.pruner.remove_layers``)
are a step of their own, ``{"layer": <the list>, "kind": "depth", "idxs":
<positions>}``; later steps name modules as they were after it, and replay
maps those names back to the fresh model's. A plan with such a step is
version 2; a plan without one is written, and read, as version 1.

Attributes a user set on the model or its modules (``model.my_tag = "x"``, a
size the forward reads) come back too, as Torch-Pruning's serialization does,
but only plain data: numbers, strings, booleans, None, and lists, tuples and
string-keyed dicts of those. Everything saved loads with
``torch.load(weights_only=True)``. Other values (objects, tensors) are not
saved; if the fresh model lacks one of them after loading, a warning names it.
Callables (functions, classes) and names starting with ``_`` are code, not
state, and ``training`` is left as the fresh model has it.

``save`` and ``load`` are ``torch.save`` and ``torch.load`` (``load`` with
``weights_only=True`` unless told otherwise), Torch-Pruning's ``tp.save`` /
``tp.load``.
"""
from __future__ import annotations

import copy
import functools
import json
import warnings
from typing import Any, Callable, Mapping

import torch
from torch import nn

from .errors import PruningError
from .graph.transaction import Transaction
from .registry import Registry, get_registry
from .registry.entries import CUSTOMIZED
from .plan_attributes import attributes_of, check_attributes, warn_unsaved
from .wrappers import unwrap

FORMAT = "pruneframe-pruning-plan"
VERSION = 1  # a plan without depth steps; one with them is DEPTH_VERSION, which an older pruneframe refuses by its number
DEPTH_VERSION = 2
DEPTH = "depth"
_ATTRIBUTE = "_pruneframe_plan"  # kept in the module's __dict__: copied with it, never in its state_dict


def record(model: nn.Module, step: list[dict[str, Any]]) -> None:
    """Append one pruned group (``{"layer", "kind", "idxs"[, "dim"][, "customized"]}`` per layer) to ``model``'s plan."""
    model.__dict__.setdefault(_ATTRIBUTE, []).append(step)


def forget_last(model: nn.Module) -> None:
    """Drop the last step of ``model``'s plan (its prune was undone).

    When that step was the plan's first, undoing it may already have removed the plan: the prune's snapshot of the
    model was taken before the plan existed.
    """
    steps = model.__dict__.get(_ATTRIBUTE)
    if steps:
        steps.pop()


def entry_of(node: Any, kind: str, idxs: list[int]) -> dict[str, Any]:
    """The plan entry for pruning ``kind`` channels ``idxs`` of a graph node."""
    entry: dict[str, Any] = {"layer": node.name, "kind": kind, "idxs": [int(i) for i in idxs]}
    if node.kind == "parameter":
        entry["dim"] = int(node.pruning_dim)
    elif node.plugin == CUSTOMIZED:
        entry["customized"] = type(node.module).__qualname__
    return entry


def depth_entry(layer_list: str, positions: list[int]) -> dict[str, Any]:
    """The plan entry for removing the blocks at ``positions`` of the layer list named ``layer_list``."""
    return {"layer": layer_list, "kind": DEPTH, "idxs": [int(i) for i in positions]}


def get_plan(model: nn.Module) -> dict[str, Any]:
    """The plan of everything pruned from ``model`` (through a DependencyGraph or ``remove_layers``), as plain data."""
    steps = unwrap(model).__dict__.get(_ATTRIBUTE, [])
    deep = any(entry.get("kind") == DEPTH for step in steps for entry in step)
    return {"format": FORMAT, "version": DEPTH_VERSION if deep else VERSION, "steps": copy.deepcopy(steps)}


def plan_steps(model: nn.Module) -> tuple[list[dict[str, Any]], ...]:
    """The steps of ``model``'s plan as they are, not copied: cheap to read often, and not to be changed."""
    return tuple(unwrap(model).__dict__.get(_ATTRIBUTE, ()))


def plan_to_json(plan_or_model: dict[str, Any] | nn.Module, path: str | None = None) -> str:
    """The plan as JSON text (written to ``path`` too, if given)."""
    plan = get_plan(plan_or_model) if isinstance(plan_or_model, nn.Module) else plan_or_model
    text = json.dumps(_checked(plan), indent=1)
    if path is not None:
        with open(path, "w") as f:
            f.write(text)
    return text


def plan_from_json(text_or_path: str) -> dict[str, Any]:
    """A plan from JSON text, or from the file it names."""
    text, where = text_or_path, "the text given"
    if not text_or_path.lstrip().startswith("{"):
        where = text_or_path
        with open(text_or_path) as f:
            text = f.read()
    try:
        plan = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{where} is not a pruning plan: it is not JSON ({exc}); write one with plan_to_json") from None
    return _checked(plan)


def apply_plan(model: nn.Module, plan: dict[str, Any], registry: Registry | None = None,
               customized_pruners: Mapping[type, Any] | None = None) -> nn.Module:
    """Prune ``model`` (freshly built, unpruned) as ``plan`` says; all of it or, on any error, none of it."""
    _checked(plan)
    inner = unwrap(model)
    with torch.inference_mode(False):  # pruned tensors must be ordinary ones (see PruneApplier.apply)
        _replay(inner, plan, registry, customized_pruners)
    record_plan(inner, plan)
    return model


def save(obj: Any, f: Any, **kwargs: Any) -> None:
    """``torch.save``: write ``state_dict(model)`` (or any object) to ``f``."""
    torch.save(obj, f, **kwargs)


def load(f: Any, map_location: Any = None, weights_only: bool = True, **kwargs: Any) -> Any:
    """``torch.load``, safe by default: what ``state_dict(model)`` wrote loads with ``weights_only=True``."""
    return torch.load(f, map_location=map_location, weights_only=weights_only, **kwargs)


def state_dict(model: nn.Module) -> dict[str, Any]:
    """The model's weights, pruning plan and plain-data attributes (of the module a wrapper holds).

    ``{"state_dict": ..., "pruning_plan": ..., "attributes": ..., "unsaved_attributes": ...}``: see the module doc.
    """
    model = unwrap(model)
    attributes, unsaved = attributes_of(model)
    return {"state_dict": model.state_dict(), "pruning_plan": get_plan(model), "attributes": attributes,
            "unsaved_attributes": unsaved}


def load_state_dict(model: nn.Module, state_dict: dict[str, Any], registry: Registry | None = None,
                    customized_pruners: Mapping[type, Any] | None = None) -> nn.Module:
    """Prune a freshly built ``model`` by ``state_dict``'s plan, then load its weights (strictly).

    A plain ``model.state_dict()`` (no plan) is loaded as it is. Layers that
    were pruned by pruners registered on a graph need the same pruners here:
    ``customized_pruners={MyLayer: MyPruner()}``. If the plan does not fit the
    model, or the weights do not fit the pruned model, nothing changes.
    """
    if not isinstance(state_dict, dict):
        raise TypeError(f"load_state_dict takes the dict pruneframe.state_dict returned, not {type(state_dict).__name__}")
    if "full_state_dict" in state_dict and "attributions" in state_dict:
        raise ValueError(
            "this is Torch-Pruning's state_dict format, which pickles every module's __dict__; pruneframe does not load "
            "pickled modules. Load it with Torch-Pruning, then save it with pruneframe.state_dict(model)."
        )
    if "pruning_plan" not in state_dict or "state_dict" not in state_dict:
        model.load_state_dict(state_dict)
        return model
    given, model = model, unwrap(model)  # a plan names the layers of the module a wrapper holds
    plan, weights = _checked(state_dict["pruning_plan"]), state_dict["state_dict"]
    with torch.inference_mode(False):  # pruned tensors must be ordinary ones (see PruneApplier.apply)
        transaction = _replay(model, plan, registry, customized_pruners)
        with warnings.catch_warnings():  # only names and shapes are read: what a plugin's export hook says is not for this
            warnings.simplefilter("ignore")
            expected = model.state_dict()
        mismatch = _misfit(expected, weights)
        if mismatch:
            transaction.fail(PruningError(
                f"the weights do not fit the model pruned by its plan ({mismatch}); was the model built with the same "
                "configuration as the one that was pruned? It was left as it was."
            ))
        try:
            assignments = check_attributes(model, state_dict.get("attributes", {}))
        except (PruningError, ValueError) as exc:
            transaction.fail(exc)
        model.load_state_dict(weights)  # names and shapes match: copying the values cannot fail now
    for module, attr, value in assignments:  # checked above: plain values on names that are no parameter or submodule
        vars(module)[attr] = copy.deepcopy(value)
    record_plan(model, plan)
    warn_unsaved(model, state_dict.get("unsaved_attributes"))
    return given


def record_plan(model: nn.Module, plan: dict[str, Any]) -> None:
    """Mark ``model`` as pruned by ``plan`` (a replayed model can be saved and replayed again)."""
    for step in plan["steps"]:
        record(model, copy.deepcopy(step))


def _misfit(expected: Mapping[str, Any], weights: Mapping[str, Any]) -> str | None:
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    shapes = [f"{k}: {tuple(weights[k].shape)} for {tuple(v.shape)}" for k, v in expected.items()
              if k in weights and hasattr(weights[k], "shape") and tuple(weights[k].shape) != tuple(v.shape)]
    parts = []
    for what, names in (("missing", missing), ("unexpected", unexpected), ("size mismatch", shapes)):
        if names:
            parts.append(f"{what}: {', '.join(names[:5])}{' ...' if len(names) > 5 else ''}")
    return "; ".join(parts) or None


_Op = tuple[str, Callable[[], Any], Any]  # what, how, the module or parameter it changes


def _replay(model: nn.Module, plan: dict[str, Any], registry: Registry | None,
            customized: Mapping[type, Any] | None) -> Transaction:
    """Check the whole plan against ``model``, then apply it as one transaction (returned, to undo on a later failure).

    Without ``registry``, the process-wide one. Either way its finders look at ``model`` first, so classes plugins
    serve by their structure (``register(..., find=...)``) resolve as they did when the model was pruned.
    """
    if model.__dict__.get(_ATTRIBUTE):
        raise PruningError(
            "this model was already pruned; a plan replays on a freshly built, unpruned model of the same architecture"
        )
    if registry is None:
        registry = get_registry(model)  # discovers too
    else:
        registry.discover(model)
    steps = _resolve(model, plan, registry, dict(customized or {}))
    _, fixups = registry.module_hooks(model)
    changed = [target for ops in steps for _, _, target in ops]
    transaction = Transaction([t for t in changed if isinstance(t, nn.Module)] + [m for m, _ in fixups],
                              [t for t in changed if not isinstance(t, nn.Module)])
    for ops in steps:
        for what, op, target in ops:
            transaction.run(what, op, target if isinstance(target, nn.Module) else None)
        for module, entry in fixups:
            transaction.run(f"the fix-up {entry.name!r} of plugin {entry.plugin!r} on {type(module).__name__}",
                            functools.partial(entry.function, module))
    return transaction


def _resolve(model: nn.Module, plan: dict[str, Any], registry: Registry, customized: dict[type, Any]) -> list[list[_Op]]:
    """Every step of ``plan`` as operations on ``model``; raises, before anything changes, where one cannot apply."""
    widths: dict[tuple[str, str], int] = {}  # the channels each layer will have at this point of the replay
    depth = _DepthReplay(model)
    steps: list[list[_Op]] = []
    for k, step in enumerate(plan["steps"]):
        ops: list[_Op] = []
        for entry in step:
            recorded, idxs = entry["layer"], list(entry["idxs"])
            where = f"step {k} of the plan, layer {recorded!r}"
            if any(not isinstance(i, int) or isinstance(i, bool) or i < 0 for i in idxs) or len(set(idxs)) != len(idxs):
                raise PruningError(f"{where}: indices must be distinct non-negative ints; the plan is damaged")
            name = depth.original_name(recorded)
            entry = {**entry, "layer": name}
            if entry["kind"] == DEPTH:
                ops.append(depth.op(name, idxs, where))
                continue
            if "dim" in entry:
                target, fn, label, width, key = _parameter_op(model, entry, registry, where)
            else:
                target, fn, label, width, key = _layer_op(model, entry, registry, customized, where)
            if width is not None:
                current = widths.get(key, width)
                if idxs and max(idxs) >= current:
                    raise PruningError(f"{where}: index {max(idxs)} is out of range for its {current} {key[1]}put "
                                       "channels at this step; the plan is for another architecture or configuration")
                widths[key] = current - len(idxs)
            ops.append((f"{where} ({label})", functools.partial(fn, target, idxs), target))
        steps.append(ops)
        depth.step_done()
    return steps


class _DepthReplay:
    """The depth steps met so far in a replay: map later names back to the fresh model's, and check the positions."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.lengths: dict[str, int] = {}  # per layer list (fresh name): its blocks at this point of the replay
        self.done: list[tuple[str, list[int]]] = []  # (list name as recorded, the kept positions) of earlier steps
        self.pending: list[tuple[str, list[int]]] = []  # those of the current step

    def original_name(self, name: str) -> str:
        """``name`` as the plan recorded it (after earlier depth steps) -> the fresh model's name for that module."""
        for list_name, kept in reversed(self.done):
            prefix = f"{list_name}." if list_name else ""
            if not name.startswith(prefix) or name == list_name:
                continue
            head, dot, tail = name[len(prefix):].partition(".")
            if head.isdigit() and int(head) < len(kept):
                name = f"{prefix}{kept[int(head)]}{dot}{tail}"
        return name

    def op(self, name: str, idxs: list[int], where: str) -> _Op:
        from .pruner.depth import CONTAINERS, remove_positions

        try:
            container = self.model.get_submodule(name)
        except AttributeError as exc:
            raise PruningError(f"{where}: the model has no layer list {name!r}; the plan is for another architecture") from exc
        if not isinstance(container, CONTAINERS):
            raise PruningError(f"{where}: {name!r} is a {type(container).__name__}, not a ModuleList or Sequential of "
                               "blocks; the plan is for another architecture")
        current = self.lengths.get(name, len(container))
        if idxs and max(idxs) >= current:
            raise PruningError(f"{where}: block {max(idxs)} is out of range for its {current} blocks at this step; the "
                               "plan is for another architecture or configuration")
        if len(idxs) >= current:
            raise PruningError(f"{where}: the step removes all {current} blocks; the plan is damaged")
        self.lengths[name] = current - len(idxs)
        numbered = list(container._modules) == [str(i) for i in range(len(container))]
        if numbered:
            kept = [p for p in range(current) if p not in set(idxs)]
            self.pending.append((name, kept))
        return (f"{where} (removing blocks {idxs})", functools.partial(remove_positions, container, idxs), container)

    def step_done(self) -> None:
        self.done += self.pending
        self.pending = []


def _parameter_op(model: nn.Module, entry: dict[str, Any], registry: Registry, where: str):
    name, dim = entry["layer"], int(entry["dim"])
    try:
        target = model.get_parameter(name)
    except AttributeError as exc:
        raise PruningError(f"{where}: the model has no parameter {name!r}; the plan is for another architecture") from exc
    found = registry.resolve(nn.Parameter)
    if found is None:
        raise PruningError(f"{where}: no installed plugin prunes raw parameters")
    if not -target.dim() <= dim < target.dim():
        raise PruningError(f"{where}: the parameter has {target.dim()} dimensions, not dim {dim}; the plan is for another architecture")
    return target, registry.handler(found.pruner, "out", dim), f"plugin {found.plugin!r}, dim {dim}", target.shape[dim], (name, "out")


def _layer_op(model: nn.Module, entry: dict[str, Any], registry: Registry, customized: dict[type, Any], where: str):
    name, kind = entry["layer"], entry["kind"]
    try:
        target = model.get_submodule("" if name == "(model)" else name)
    except AttributeError as exc:
        raise PruningError(f"{where}: the model has no layer {name!r}; the plan is for another architecture") from exc
    layer_type = type(target).__qualname__
    found = registry.resolve(type(target), customized)
    if entry.get("customized") and (found is None or found.plugin != CUSTOMIZED):
        raise PruningError(
            f"{where}: this {layer_type} was pruned by a pruner registered on the graph (register_customized_layer); "
            f"pass the same pruner: load_state_dict(model, state_dict=sd, customized_pruners={{{layer_type}: "
            f"{layer_type}Pruner()}}) (or apply_plan(..., customized_pruners=...))"
        )
    if found is None:
        raise PruningError(f"{where}: no installed plugin prunes {layer_type}; install the plugin that pruned it, or pass "
                           f"customized_pruners={{{layer_type}: ...}}")
    pruner = found.pruner
    coupled = bool(pruner.in_out_coupled(target)) if callable(getattr(pruner, "in_out_coupled", None)) else False
    width = None
    if found.plugin != CUSTOMIZED:  # a user's own get_*_channels may be wrong; the replay itself then checks ranges
        count = pruner.get_out_channels(target) if kind == "out" or coupled else pruner.get_in_channels(target)
        width = count if isinstance(count, int) else None
    label = f"plugin {found.plugin!r}, {kind}put channels"
    return target, registry.handler(pruner, kind), label, width, (name, "out" if coupled else kind)


def _checked(plan: Any) -> dict[str, Any]:
    if not isinstance(plan, dict) or plan.get("format") != FORMAT:
        raise ValueError(f"not a pruneframe pruning plan (expected 'format': {FORMAT!r})")
    if plan.get("version") not in (VERSION, DEPTH_VERSION):
        raise ValueError(f"pruning plan version {plan.get('version')!r}; this pruneframe reads version {VERSION} (and "
                         f"{DEPTH_VERSION}, a plan that removes whole layers)")
    kinds = ("out", "in", DEPTH) if plan["version"] == DEPTH_VERSION else ("out", "in")
    for step in plan.get("steps", []):
        for entry in step:
            if not isinstance(entry, dict) or not {"layer", "kind", "idxs"} <= entry.keys() or entry["kind"] not in kinds:
                raise ValueError(f"malformed pruning plan entry {entry!r}: it needs 'layer', 'kind' ({'/'.join(kinds)}) "
                                 "and 'idxs'")
    return plan


__all__ = ["apply_plan", "depth_entry", "entry_of", "get_plan", "load", "load_state_dict", "plan_from_json", "plan_steps", "plan_to_json", "record", "save",
           "state_dict"]
