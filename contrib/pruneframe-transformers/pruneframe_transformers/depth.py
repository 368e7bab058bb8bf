"""The config of a model that lost whole layers: the layer count and the per-layer lists, found and proven generically.

``depth_changes(model, config, found)`` compares the length of every numbered
``ModuleList`` / ``Sequential`` of the pruned model with the model the config
builds (``found``, the probe of the config). For each list that got shorter it
looks, in the config and its nested configs, for

- the *count*: an integer field whose value is the list's old length and which,
  set to the new length, builds a list of that length (the meta-device build
  decides, so ``num_hidden_layers``, GPT-2's ``n_layer`` and T5's
  ``num_decoder_layers`` need no name);
- the *per-layer lists* next to it: list fields of the old length that the
  family's config defines (``layer_types``), shortened the way the blocks were,
  read from ``pruneframe.pruner.depth.position_history``.

``config_sync`` merges these into its proposal and accepts the whole only if
the rebuild matches the model, including, block by block, the attributes a
per-layer setting decides (an attention's ``sliding_window``, a layer's
``attention_type``) and the renumbered ``layer_idx``.
"""
from __future__ import annotations

import copy
from functools import lru_cache
from typing import Any

from torch import nn

from pruneframe.pruner.depth import CONTAINERS, position_history

from .probing import MISSING, Probe, build_on_meta, nested_configs, set_field

_PLAIN = (str, int, float, bool, type(None))


@lru_cache(maxsize=None)
def _base_fields() -> frozenset[str]:
    """The fields every config has (``architectures``, ``id2label``, ...): none of them is per layer."""
    from transformers import PretrainedConfig

    return frozenset(PretrainedConfig().to_dict())


def numbered_lists(model: nn.Module) -> dict[str, nn.Module]:
    """Every ``ModuleList`` / ``Sequential`` of ``model`` whose children are named ``0 .. n-1``, by name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, CONTAINERS) and len(m)
            and list(m._modules) == [str(i) for i in range(len(m))]}


def _built_length(shapes: dict[str, Any], name: str) -> int | None:
    """How many blocks the list ``name`` has in the model whose tensor names are ``shapes`` (None: no tensor says)."""
    prefix = f"{name}." if name else ""
    found = {int(head) for tensor in shapes if tensor.startswith(prefix)
             for head in [tensor[len(prefix):].split(".", 1)[0]] if head.isdigit()}
    return max(found) + 1 if found else None


def shortened_lists(model: nn.Module, found: Probe) -> dict[str, tuple[int, int]]:
    """The lists of ``model`` shorter than in the model the probed config builds: name -> (built length, length now)."""
    out = {}
    for name, container in numbered_lists(model).items():
        built = _built_length(found.shapes, name)
        if built is not None and built != len(container):
            out[name] = (built, len(container))
    return out


def depth_changes(model: nn.Module, config: Any, found: Probe) -> dict[str, Any] | str:
    """The config fields (dotted names) to write for the layers removed from ``model``; {} if none were; or why it cannot."""
    shortened = shortened_lists(model, found)
    if not shortened:
        return {}
    containers = numbered_lists(model)
    changes: dict[str, Any] = {}
    for name, (built, now) in shortened.items():
        if now > built:
            return f"{name} has {now} blocks where the config builds {built}; pruneframe only removes blocks"
        found_fields = _count_for(model, config, name, built, now, containers[name])
        if isinstance(found_fields, str):
            return found_fields
        for field, value in found_fields.items():
            if field in changes and changes[field] != value:
                return f"{field} would have to be both {changes[field]!r} and {value!r}"
            changes[field] = value
    return changes


def _count_for(model: nn.Module, config: Any, name: str, built: int, now: int, container: nn.Module) -> dict[str, Any] | str:
    """The count field (and the per-layer lists beside it) that builds ``now`` blocks in the list ``name``."""
    candidates = []
    for prefix, part in [("", config), *nested_configs(config)]:
        for key in part.to_dict():
            if type(getattr(part, key, None)) is int and getattr(part, key) == built and key not in _base_fields():
                candidates.append((prefix, part, key))
    candidates.sort(key=lambda c: "layer" not in c[2])  # the likeliest first: every candidate costs a meta build
    tried = []
    for prefix, part, key in candidates:
        lists = _per_layer_lists(prefix, part, built, now, container, name)
        if isinstance(lists, str):
            return lists
        attempt = {prefix + key: now, **lists}
        trial = copy.deepcopy(config)
        for field, value in attempt.items():
            set_field(trial, field, value)
        try:
            rebuilt = build_on_meta(type(model), trial)
        # a probe: any error of the config's validation or the model's constructor means "not this field"
        except Exception:  # noqa: BLE001
            tried.append(prefix + key)
            continue
        if _has(rebuilt, name) and len(rebuilt.get_submodule(name)) == now:
            return attempt
        tried.append(prefix + key)
    return (f"{name} now has {now} blocks, and no integer field of {type(config).__name__} that is {built} "
            f"({', '.join(tried) or 'none'}) builds that many")


def _has(model: nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
    except AttributeError:
        return False
    return True


def _per_layer_lists(prefix: str, part: Any, built: int, now: int, container: nn.Module, name: str) -> dict[str, Any] | str:
    """Every per-layer list field of ``part`` (length ``built``), shortened as the blocks of ``container`` were."""
    lists = {key: getattr(part, key) for key in part.to_dict() if key not in _base_fields()
             and isinstance(getattr(part, key, None), (list, tuple)) and len(getattr(part, key)) == built}
    if not lists:
        return {}
    history = position_history(container)
    state = next((s for s in history if len(s) == built), None)
    current = history[-1]
    out = {}
    for key, values in lists.items():
        if state is not None and len(current) == now:
            kept = [values[state.index(p)] for p in current]
        elif len({repr(v) for v in values}) == 1:  # the same for every layer: which ones went does not matter
            kept = [values[0]] * now
        else:
            return (f"{name} lost blocks outside pruneframe.pruner.remove_layers, so which entries of "
                    f"{prefix}{key} ({list(values)}) go with them is unknown; remove layers with remove_layers")
        out[prefix + key] = type(values)(kept)
    return out


def length_differences(model: nn.Module, built: nn.Module) -> list[str]:
    """Where a list of blocks has another length in ``built`` than in ``model``."""
    built_lists = numbered_lists(built)
    return [f"{name} with {len(built_lists[name])} blocks where the model has {len(m)}"
            for name, m in numbered_lists(model).items() if name in built_lists and len(built_lists[name]) != len(m)]


def block_differences(model: nn.Module, built: nn.Module, lists: Any) -> list[str]:
    """Where a block of the lists ``lists`` stores another plain value (a layer type, a window, a None) in ``built``."""
    built_modules = dict(built.named_modules())
    out = []
    for list_name in lists:
        for name, module in model.get_submodule(list_name).named_modules(prefix=list_name):
            other = built_modules.get(name)
            if other is None:
                continue
            for key, value in vars(module).items():
                if key.startswith("_") or key == "training" or type(value) not in _PLAIN:
                    continue
                theirs = vars(other).get(key, MISSING)
                if theirs is not MISSING and type(theirs) in _PLAIN and theirs != value:
                    out.append(f"{name}.{key} = {theirs!r} where the model has {value!r}")
    return out

