"""MetaPruner's arguments: the default ratio scheduler, and the checks and conversions run before anything is traced."""
from __future__ import annotations

import warnings
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..importance.experts import ExpertRouter
from ..layer_pruner import counts_as
from ..registry import get_registry
from . import targets


def linear_scheduler(pruning_ratio: float, steps: int) -> list[float]:
    """Ratios after each of ``steps`` steps growing linearly to ``pruning_ratio``, starting from 0 (``steps + 1`` values)."""
    return [pruning_ratio * i / steps for i in range(steps + 1)]


def short_repr(obj: Any) -> str:
    text = repr(obj).splitlines()[0]
    return text if len(text) <= 80 else text[:77] + "..."


def layer_label(model: nn.Module, key: Any) -> str:
    """How a message names a layer (or a tuple of layers) of ``model``: by its name in the model."""
    names = {id(m): n or "(model)" for n, m in model.named_modules()}
    keys = key if isinstance(key, (tuple, list)) else (key,)
    labels = [names.get(id(k), short_repr(k)) for k in keys]
    return labels[0] if len(labels) == 1 and not isinstance(key, (tuple, list)) else f"({', '.join(labels)})"


def check_layers_of(model: nn.Module, ignored_layers: Any, pruning_ratio_dict: Any, num_heads: Any) -> None:
    """Layers given to the pruner must be modules of ``model`` (the trace would not meet any other): checked before it runs."""
    names = {id(m): n or "(model)" for n, m in model.named_modules()}
    parameters = {id(p) for p in model.parameters()}

    def check(what: str, layer: Any, allow_parameters: bool = False) -> None:
        if isinstance(layer, str):
            raise TypeError(f"{what} takes the layers themselves, not their names: pass model.{layer} instead of {layer!r}")
        if allow_parameters and isinstance(layer, torch.Tensor):
            if id(layer) not in parameters:
                raise ValueError(f"{what}: a tensor of shape {tuple(layer.shape)} is not a parameter of this model")
            return
        if not isinstance(layer, nn.Module):
            raise TypeError(f"{what} takes nn.Module layers of the model, not {type(layer).__name__} ({short_repr(layer)})")
        if id(layer) not in names:
            raise ValueError(f"{what}: {short_repr(layer)} is not a layer of this model (a copy, or another model's?); "
                             "pass the model's own module, e.g. model.fc")

    for layer in ignored_layers or ():
        check("ignored_layers", layer, allow_parameters=True)
    for key in pruning_ratio_dict or {}:
        for layer in key if isinstance(key, (tuple, list)) else (key,):
            check("pruning_ratio_dict", layer)
    for layer, heads in (num_heads or {}).items():
        check("num_heads", layer)
        if not isinstance(heads, int) or isinstance(heads, bool) or heads < 1:
            raise ValueError(f"num_heads[{names[id(layer)]}]={heads!r}: the number of heads must be a positive int")


def check_remove_layers(model: nn.Module, remove_layers: Any) -> int | tuple[str, ...] | None:
    """``remove_layers`` checked against ``model`` before anything is traced: a count, or the blocks' names (as a tuple)."""
    from .depth import LayerScore, check_layers, layer_lists, removable_count

    if remove_layers is None:
        return None
    if isinstance(remove_layers, int) and not isinstance(remove_layers, bool):
        most = removable_count(model)
        if remove_layers < 0 or (remove_layers > most and remove_layers > 0):
            lists = ", ".join(f"{ll.name or '(model)'}: {len(ll.removable)} of {len(ll)} blocks" for ll in layer_lists(model))
            raise ValueError(f"remove_layers={remove_layers}: give a count from 0 to {most}, the blocks this model can lose "
                             f"(removable per layer list: {lists or 'none, the model has no layer list'}; each list keeps one)")
        return remove_layers
    items = [remove_layers] if isinstance(remove_layers, (str, nn.Module)) else remove_layers
    if not isinstance(items, (list, tuple)) or any(isinstance(i, (int, bool)) for i in items):
        raise TypeError(f"remove_layers={short_repr(remove_layers)}: give a count (remove that many blocks, ranked by "
                        "pruner.calibrate(batches)) or a list of block names such as ['model.layers.3']")
    if not all(isinstance(i, (str, nn.Module, LayerScore)) for i in items):
        bad = next(i for i in items if not isinstance(i, (str, nn.Module, LayerScore)))
        raise TypeError(f"remove_layers: {short_repr(bad)} ({type(bad).__name__}) is not a block; name it, e.g. 'model.layers.3'")
    try:
        return tuple(check_layers(model, items))
    except ValueError as exc:
        raise ValueError(f"remove_layers: {exc}") from None


def schedule(scheduler: Callable[[float, int], Sequence[float]], ratio: float, steps: int) -> list[float]:
    values = list(scheduler(ratio, steps))
    if len(values) != steps + 1:
        raise ValueError(f"the pruning ratio scheduler gave {len(values)} ratios for {steps} steps; it must give steps + 1, from 0")
    return [float(v) for v in values]


def renamed_arguments(pruning_ratio: Any, pruning_ratio_dict: Any, ch_sparsity: Any, ch_sparsity_dict: Any) -> tuple[Any, Any]:
    """Torch-Pruning's older names (``ch_sparsity``, ``ch_sparsity_dict``) as the current ones, with a deprecation warning."""
    if ch_sparsity is not None:
        warnings.warn("ch_sparsity is deprecated: use pruning_ratio", DeprecationWarning, stacklevel=3)
        pruning_ratio = ch_sparsity
    if ch_sparsity_dict is not None:
        warnings.warn("ch_sparsity_dict is deprecated: use pruning_ratio_dict", DeprecationWarning, stacklevel=3)
        pruning_ratio_dict = ch_sparsity_dict
    return pruning_ratio, pruning_ratio_dict


def with_expert_roots(root_module_types: Any, expert_pruning_ratio: Any) -> tuple[type, ...]:
    """``root_module_types``, plus the ``ExpertRouter`` marker when ``expert_pruning_ratio`` (checked here) asks for whole experts."""
    check_ratio("expert_pruning_ratio", expert_pruning_ratio)
    types = tuple(root_module_types)
    return types if not expert_pruning_ratio or ExpertRouter in types else (*types, ExpertRouter)


def expert_router_schedules(graph: Any, expert_pruning_ratio: float, pruning_ratio_dict: Any,
                            scheduler: Callable[[float, int], Sequence[float]],
                            steps: int) -> tuple[dict[nn.Module, list[float]], dict[nn.Module, str]]:
    """Per router of the traced ``graph`` (a layer whose pruner ``acts_like`` ``ExpertRouter``), the schedule of
    ``expert_pruning_ratio`` and a scope of its own, so every mixture-of-experts layer loses that share of its experts.

    A router that is itself a ``pruning_ratio_dict`` key keeps the ratio given there. No router at all is an error.
    """
    if not expert_pruning_ratio:
        return {}, {}
    routers = {node.module: node.name for node in graph.module2node.values()
               if node.kind == "layer" and counts_as(node.module, node.pruner, (ExpertRouter,))}
    if not routers:
        raise ValueError(f"expert_pruning_ratio={expert_pruning_ratio!r}: this model has no mixture-of-experts router (no layer "
                         "whose pruner acts_like ExpertRouter); install the plugin for its family (pruneframe-transformers "
                         "for Hugging Face models) or drop expert_pruning_ratio")
    given = {id(m) for key in pruning_ratio_dict or {} for m in (key if isinstance(key, (tuple, list)) else (key,))}
    chosen = {router: name for router, name in routers.items() if id(router) not in given}
    return ({router: schedule(scheduler, expert_pruning_ratio, steps) for router in chosen},
            {router: f"local:experts of {name}" for router, name in chosen.items()})


def check_ratio(name: str, value: Any, allow_one: bool = False) -> None:
    if not isinstance(value, (int, float)) or not (0.0 <= value < 1.0 or (allow_one and value == 1.0)):
        raise ValueError(f"{name}={value!r}: it must be a number in [0, 1{']' if allow_one else ')'}")


def parameter_pairs(unwrapped: Any) -> list[tuple[nn.Parameter, int]] | None:
    """Torch-Pruning takes a dict {parameter: dim} or a list of (parameter, dim) pairs."""
    if unwrapped is None:
        return None
    if isinstance(unwrapped, dict):
        return list(unwrapped.items())
    return list(unwrapped)


def check_arguments(pruning_ratio: Any, max_pruning_ratio: Any, head_pruning_ratio: Any, iterative_steps: Any, round_to: Any,
                    importance: Any, target_macs: Any, target_params: Any, ratio_is_default: bool,
                    prune_query_heads: Any = False, keep_loadable: Any = True) -> None:
    """The arguments that can be checked alone, each named with its value when it is wrong."""
    check_ratio("pruning_ratio", pruning_ratio)
    check_ratio("max_pruning_ratio", max_pruning_ratio, allow_one=True)
    check_ratio("head_pruning_ratio", head_pruning_ratio)
    if not isinstance(iterative_steps, int) or iterative_steps < 1:
        raise ValueError(f"iterative_steps={iterative_steps!r}: it must be a positive int")
    if round_to is not None and (not isinstance(round_to, int) or round_to < 1):
        raise ValueError(f"round_to={round_to!r}: it must be a positive int or None")
    if not callable(importance):
        raise TypeError(f"importance must be callable (group -> scores), not {type(importance).__name__}")
    if (target_macs is not None or target_params is not None) and not ratio_is_default:
        raise ValueError(f"pruning_ratio={pruning_ratio!r} and a target (target_macs / target_params) were both given: "
                         "the target decides the ratio; pass one of them")
    for name, flag in (("prune_query_heads", prune_query_heads), ("keep_loadable", keep_loadable)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name}={flag!r}: it must be True or False")
    if prune_query_heads and (target_macs is not None or target_params is not None):
        raise ValueError("prune_query_heads=True with a target (target_macs / target_params): query heads are removed by "
                         "pruning_ratio (and pruning_ratio_dict), not searched for a target; pass pruning_ratio instead")
    for name, value in (("target_macs", target_macs), ("target_params", target_params)):
        if value is not None:
            targets.parse_count(value, name)  # a malformed target is refused before anything is run


def ratio_dict_schedules(model: nn.Module, pruning_ratio_dict: Any, scheduler: Callable[[float, int], Sequence[float]],
                         steps: int, global_pruning: bool) -> tuple[dict[nn.Module, list[float]], dict[nn.Module, str]]:
    """Per layer, its ratio schedule and ranking scope from ``pruning_ratio_dict``.

    A key is a module, or a tuple of modules ranked together as one scope. A block (a module with submodules)
    gives its ratio to every layer inside it; those are ranked together only with global pruning, each layer on
    its own otherwise (as in Torch-Pruning). Later entries win.
    """
    ratios: dict[nn.Module, list[float]] = {}
    scopes: dict[nn.Module, str] = {}
    for k, (key, ratio) in enumerate((pruning_ratio_dict or {}).items()):
        check_ratio(f"pruning_ratio_dict[{layer_label(model, key)}]", ratio)
        for m in key if isinstance(key, (tuple, list)) else (key,):
            if not isinstance(m, nn.Module):
                raise TypeError(f"pruning_ratio_dict keys are modules or tuples of modules, not {type(m).__name__}")
            for layer in m.modules():
                ratios[layer] = schedule(scheduler, ratio, steps)
                if layer is m or global_pruning:
                    scopes[layer] = f"ratio-dict-{k}"
                else:
                    scopes.pop(layer, None)
    return ratios, scopes


def with_whole_heads_variants(model: nn.Module, num_heads: dict[nn.Module, int], customized: dict[type, Any]) -> dict[type, Any]:
    """``customized`` plus, for each layer with declared heads whose pruner offers one, its whole-heads variant."""
    registry = get_registry(model)
    out = dict(customized)
    for module in num_heads:
        pruner = out.get(type(module)) or registry.layer_pruner(type(module))
        variant = getattr(pruner, "with_whole_heads", None)
        if variant is not None and type(module) not in out:
            out[type(module)] = variant()
    return out
