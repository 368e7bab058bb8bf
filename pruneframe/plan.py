"""The pruning plan: what was removed from a model, so a fresh copy can be pruned the same way.

Every ``Group.prune()`` appends one step to the plan of the graph's model:
per layer (by its name in the model), whether outputs or inputs were pruned,
the indices (as they were at that moment) and, for a raw parameter, the
dimension. Replaying the steps in order on a freshly built, unpruned model of
the same architecture gives the pruned architecture; loading the weights then
gives the pruned model. No class is pickled, so a saved file loads wherever
the model's own code does.

``state_dict(model)`` returns ``{"state_dict": ..., "pruning_plan": ...}``;
``load_state_dict(fresh_model, state_dict=sd)`` replays and loads. The plan
alone is readable JSON: ``plan_to_json`` / ``plan_from_json``.
"""
from __future__ import annotations

import copy
import json
from typing import Any, Iterable

from torch import nn

from .errors import PruningError
from .registry import Registry, get_registry

FORMAT = "pruneframe-pruning-plan"
VERSION = 1
_ATTRIBUTE = "_pruneframe_plan"  # kept in the module's __dict__: copied with it, never in its state_dict


def record(model: nn.Module, step: list[dict[str, Any]]) -> None:
    """Append one pruned group (``{"layer", "kind", "idxs"[, "dim"]}`` per layer) to ``model``'s plan."""
    model.__dict__.setdefault(_ATTRIBUTE, []).append(step)


def get_plan(model: nn.Module) -> dict[str, Any]:
    """The plan of everything pruned from ``model`` through a DependencyGraph, as plain data."""
    steps = model.__dict__.get(_ATTRIBUTE, [])
    return {"format": FORMAT, "version": VERSION, "steps": copy.deepcopy(steps)}


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
    text = text_or_path
    if not text_or_path.lstrip().startswith("{"):
        with open(text_or_path) as f:
            text = f.read()
    return _checked(json.loads(text))


def apply_plan(model: nn.Module, plan: dict[str, Any], registry: Registry | None = None) -> nn.Module:
    """Prune ``model`` (freshly built, unpruned) as ``plan`` says; all of it or, on any error, none of it."""
    _checked(plan)
    registry = registry or get_registry()
    trial = copy.deepcopy(model)  # replay on a copy first: an error there leaves the user's model untouched
    _replay(trial, plan, registry)
    _replay(model, plan, registry)
    return model


def state_dict(model: nn.Module) -> dict[str, Any]:
    """The model's weights and its pruning plan: ``{"state_dict": ..., "pruning_plan": ...}``."""
    return {"state_dict": model.state_dict(), "pruning_plan": get_plan(model)}


def load_state_dict(model: nn.Module, state_dict: dict[str, Any], registry: Registry | None = None) -> nn.Module:
    """Prune a freshly built ``model`` by ``state_dict``'s plan, then load its weights (strictly).

    A plain ``model.state_dict()`` (no plan) is loaded as it is. If the plan does
    not fit the model, or the weights do not fit the pruned model, nothing changes.
    """
    if not isinstance(state_dict, dict):
        raise TypeError(f"load_state_dict takes the dict pruneframe.state_dict returned, not {type(state_dict).__name__}")
    if "pruning_plan" not in state_dict or "state_dict" not in state_dict:
        model.load_state_dict(state_dict)
        return model
    plan, weights = _checked(state_dict["pruning_plan"]), state_dict["state_dict"]
    registry = registry or get_registry()
    trial = copy.deepcopy(model)
    _replay(trial, plan, registry)
    try:
        trial.load_state_dict(weights)
    except RuntimeError as exc:
        raise PruningError(
            f"the weights do not fit the model pruned by its plan ({exc}); was the model built with the same "
            "configuration as the one that was pruned? It was left as it was."
        ) from exc
    del trial
    _replay(model, plan, registry)
    model.load_state_dict(weights)
    return model


def _replay(model: nn.Module, plan: dict[str, Any], registry: Registry) -> None:
    if model.__dict__.get(_ATTRIBUTE):
        raise PruningError(
            "this model was already pruned; a plan replays on a freshly built, unpruned model of the same architecture"
        )
    for k, step in enumerate(plan["steps"]):
        for entry in step:
            _prune_one(model, entry, registry, k)
        for module in model.modules():
            for fixup in registry.fixups:
                if isinstance(module, fixup.module_types):
                    fixup.function(module)
        record(model, copy.deepcopy(step))


def _prune_one(model: nn.Module, entry: dict[str, Any], registry: Registry, step: int) -> None:
    name, kind, idxs = entry["layer"], entry["kind"], list(entry["idxs"])
    where = f"step {step} of the plan, layer {name!r}"
    if "dim" in entry:
        try:
            target: Any = model.get_parameter(name)
        except AttributeError as exc:
            raise PruningError(f"{where}: the model has no parameter {name!r}; the plan is for another architecture") from exc
        pruner = registry.layer_pruner(nn.Parameter)
        if pruner is None:
            raise PruningError(f"{where}: no installed plugin prunes raw parameters")
        pruner.prune_out_channels(target, idxs, dim=int(entry["dim"]))
        return
    try:
        target = model.get_submodule("" if name == "(model)" else name)
    except AttributeError as exc:
        raise PruningError(f"{where}: the model has no layer {name!r}; the plan is for another architecture") from exc
    pruner = registry.layer_pruner(type(target))
    if pruner is None:
        raise PruningError(f"{where}: no installed plugin prunes {type(target).__name__}; install the plugin that pruned it")
    fn = pruner.prune_out_channels if kind == "out" else pruner.prune_in_channels
    try:
        fn(target, idxs)
    except (IndexError, ValueError) as exc:
        raise PruningError(f"{where}: {exc}; the plan does not fit this model") from exc


def _checked(plan: Any) -> dict[str, Any]:
    if not isinstance(plan, dict) or plan.get("format") != FORMAT:
        raise ValueError(f"not a pruneframe pruning plan (expected 'format': {FORMAT!r})")
    if plan.get("version") != VERSION:
        raise ValueError(f"pruning plan version {plan.get('version')!r}; this pruneframe reads version {VERSION}")
    for step in plan.get("steps", []):
        for entry in step:
            if not isinstance(entry, dict) or not {"layer", "kind", "idxs"} <= entry.keys() or entry["kind"] not in ("out", "in"):
                raise ValueError(f"malformed pruning plan entry {entry!r}: it needs 'layer', 'kind' ('out'/'in') and 'idxs'")
    return plan


def steps_of(items: Iterable[tuple[Any, str, list[int]]]) -> list[dict[str, Any]]:
    """Plan entries for pruned (node, kind, idxs)."""
    step = []
    for node, kind, idxs in items:
        entry: dict[str, Any] = {"layer": node.name, "kind": kind, "idxs": [int(i) for i in idxs]}
        if node.kind == "parameter":
            entry["dim"] = int(node.pruning_dim)
        step.append(entry)
    return step


__all__ = ["apply_plan", "get_plan", "load_state_dict", "plan_from_json", "plan_to_json", "record", "state_dict"]
