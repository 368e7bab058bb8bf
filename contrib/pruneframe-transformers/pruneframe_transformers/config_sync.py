"""Keep a pruned Hugging Face model's ``config`` describing it, or say clearly that it cannot.

``sync_config(model)`` (the fix-up pruneframe runs after every prune and on
plan replay) infers the config from the pruned shapes, for any model class:

1. ``probing`` learns, once per model class and config, how each integer size
   field of the config moves each tensor dimension (meta-device builds);
2. ``solving`` reads the pruned shapes through that and proposes field values;
3. the proposal is accepted only if the model class built from it on the meta
   device matches the pruned model in every parameter and buffer shape and
   every number a submodule stores. A stored count the prune left stale (an
   int that still has the value the old config gives, like an MLP's
   ``intermediate_size`` nothing reads) is set to the rebuilt model's value;
   any other difference rejects the proposal.

Whole layers removed (``pruneframe.pruner.remove_layers``) join the proposal
through ``depth``: the layer count and the per-layer lists (``layer_types``),
verified by the same rebuild, which then also has to give every list of blocks
the model's length and every kept block its stored values (``layer_idx``, its
attention type). Only a verified update is written, so ``save_pretrained`` +
``from_pretrained`` rebuilds exactly this model. A field the config leaves unset (``head_dim``) is
added only when the model needs it.

When the layers were pruned differently, or the config class has no way to say
the sizes (BERT and GPT-2 derive the head width from ``hidden_size /
num_attention_heads``, so fewer heads of the same width cannot be written), the
size fields are left as they are: they still describe the last model they
described exactly, every prune since then shrank some weight, so
``from_pretrained`` on a ``save_pretrained`` copy stops with a size mismatch
instead of loading a wrong model. The config gets an entry
``pruneframe_unexpressed`` (saved in ``config.json``) with the reason and the
per-layer sizes, and exporting the weights (``model.state_dict()``, which
``save_pretrained`` calls) warns once with a ``ConfigMismatchWarning`` naming
the layers, pointing to ``pruneframe.state_dict`` / ``pruneframe.load_state_dict``.
The warning waits for the export because a prune of every layer alike passes
through non-uniform states between its groups.
"""
from __future__ import annotations

import copy
import warnings
import weakref
from typing import Any

import attrs
from torch import nn

from .depth import block_differences, depth_changes, length_differences, shortened_lists
from .families import family_of, missing_needs
from .probing import (MARKER, MISSING, Probe, build_on_meta, get_field, nested_configs, probe, set_field,
                      size_attributes, tensor_shapes)
from .solving import Inexpressible, Uneven, rows, solve

# per model: the export warnings already given, and the last verification (signature, differences)
_warned: "weakref.WeakKeyDictionary[nn.Module, set[str]]" = weakref.WeakKeyDictionary()
_checked: "weakref.WeakKeyDictionary[nn.Module, tuple[Any, list[str]]]" = weakref.WeakKeyDictionary()
# (model class, config, field values) -> why a config with those values does not build ('' if it does)
_builds: dict[tuple[Any, str, tuple[tuple[str, int], ...]], str] = {}
# nested model -> the model it was found in, sharing its config
_enclosing: "weakref.WeakKeyDictionary[nn.Module, weakref.ref[nn.Module]]" = weakref.WeakKeyDictionary()


class ConfigMismatchWarning(UserWarning):
    """``model.config`` does not describe the pruned model: ``from_pretrained`` cannot rebuild it from a ``save_pretrained`` copy."""


@attrs.frozen
class ConfigStatus:
    """What ``sync_config`` found: whether the config now describes the model, what it changed, and what differs.

    ``sizes`` maps each config field to the (block name, value) pairs the pruned shapes imply, block by block.
    """

    describes_model: bool
    changed: dict[str, Any]
    sizes: dict[str, list[tuple[str, int]]]
    reason: str | None
    unstatable: bool = False  # no config states these sizes, however the other layers are pruned


@attrs.frozen
class _Verdict:
    """How the model built from a proposed config compares with the pruned model."""

    differences: list[str]  # what rejects the proposal
    stale: list[tuple[str, str, Any]]  # (module name, attribute, rebuilt value): counts the prune left at the old value


def layer_sizes(model: nn.Module) -> dict[str, list[tuple[str, int]]]:
    """Per config field, the value each block of ``model`` (an attention, an MLP, ...) implies from its shapes, in module order."""
    config = getattr(model, "config", None)
    if config is None:
        return {}
    found = probe(type(model), config)
    table = rows(found, tensor_shapes(model))
    result = solve(found, table)
    if isinstance(result, Uneven):
        return result.sizes
    if isinstance(result, Inexpressible):
        return {}
    return _per_block(found, table, result[0])


def fix_modules(model: nn.Module) -> None:
    """Run every known submodule's fix-up (idempotent): stored head counts and widths follow the weights."""
    for module in model.modules():
        family = family_of(module)
        if family is not None and not missing_needs(module, family):
            family.fixup(module)


def sync_config(model: nn.Module) -> ConfigStatus:
    """Update ``model.config`` to the pruned sizes when it can describe them exactly; otherwise mark it (see the module docstring).

    A model nested in another one that shares its config or a config nested in
    it (``LlamaModel`` in ``LlamaForCausalLM``, CLIP's text model and
    ``text_config``) is left to the enclosing one, which pruneframe fixes first:
    built on its own the nested class may differ (a ViTModel gets a pooler).
    """
    config = getattr(model, "config", None)
    if config is None:
        return ConfigStatus(False, {}, {}, f"{type(model).__name__} has no config")
    outer = enclosing_model(model)
    if outer is not None:
        return sync_config(outer)
    for module in model.modules():
        if module is not model and hasattr(module, "_from_config") and _shares_config(model, module):
            _enclosing[module] = weakref.ref(model)
    fix_modules(model)
    try:
        found = probe(type(model), config)
    # the model's own constructor or the config's validation, on the config as it is: their message is the answer
    except Exception as exc:  # noqa: BLE001
        return _unexpressed(config, {}, f"{type(model).__name__} cannot be built from its config ({type(exc).__name__}: {exc})")
    depth = depth_changes(model, config, found)  # whole layers removed: the layer count and per-layer lists
    if isinstance(depth, str):
        return _unexpressed(config, {}, depth)
    table = rows(found, tensor_shapes(model))
    result = solve(found, table)
    name = type(config).__name__
    if isinstance(result, Uneven):  # (the reason names no modules: a model nested in another one shares its config)
        listed = "; ".join(f"{field} is {[v for _, v in pairs]}" for field, pairs in result.sizes.items())
        differ = f"the layers differ ({listed}, layer by layer)" if listed else "the layers differ"
        never = _never_buildable(type(model), config, result.sizes)  # a block's sizes no config builds, even uniform
        status = _unexpressed(config, result.sizes, f"{differ} and {name} holds one value per field" + (f"; {never}" if never else ""))
        return attrs.evolve(status, unstatable=bool(never))
    if isinstance(result, Inexpressible):  # changed dimensions no values of the fields give: a prune the config cannot state
        return attrs.evolve(_unexpressed(config, {}, f"{name} cannot describe these sizes: {result.why}"), unstatable=True)
    best = _best_proposal(model, config, found, result, depth)
    stored = stored_changes(found, model) if isinstance(best, str) else {}
    if stored:  # e.g. BERT's hidden size and head count pruned in step: the head count is stored
        best = _best_proposal(model, config, found, [{**values, **stored} for values in result], depth)
    if isinstance(best, str):  # the layers agree, yet no proposal rebuilds them: no config states this prune either
        return attrs.evolve(_unexpressed(config, _per_block(found, table, result[0]), best), unstatable=True)
    attempt, verdict, values = best
    modules = dict(model.named_modules())
    for module_name, key, value in verdict.stale:
        setattr(modules[module_name], key, value)
    for field, value in attempt.items():
        set_field(config, field, value)
    for part in [config, *(nested for _, nested in nested_configs(config))]:
        if hasattr(part, MARKER):  # (a nested config is marked when a model nested in this one was checked on its own)
            delattr(part, MARKER)
    return ConfigStatus(True, attempt, _per_block(found, table, values), None)


def _never_buildable(model_class: type, config: Any, sizes: dict[str, list[tuple[str, int]]]) -> str:
    """Why no config could state one block's sizes even if every layer had them ('' if each builds).

    Per block, its implied field values are set together on a copy of the config, which must build on the meta
    device (LlamaConfig refuses 6 heads for a hidden size of 64): a layer pruned that way alone looks merely uneven,
    yet pruning the other layers alike could never be written either.
    """
    by_block: dict[str, dict[str, int]] = {}
    for field, pairs in sizes.items():
        for block, value in pairs:
            by_block.setdefault(block, {})[field] = value
    for values in {tuple(sorted(v.items())) for v in by_block.values()}:
        changed = {f: v for f, v in values if get_field(config, f) != v}
        if not changed:
            continue
        key = (model_class, config.to_json_string(use_diff=False), tuple(sorted(changed.items())))
        if key not in _builds:
            candidate = copy.deepcopy(config)
            for field, value in changed.items():
                set_field(candidate, field, value)
            try:
                build_on_meta(model_class, candidate)
                _builds[key] = ""
            # the config's validation or the model's constructor: its message is the reason
            except Exception as exc:  # noqa: BLE001
                _builds[key] = (f"with {', '.join(f'{f}={v}' for f, v in changed.items())} {model_class.__name__} cannot be "
                                f"built ({type(exc).__name__}: {' '.join(str(exc).split())[:300]})")
        if _builds[key]:
            return _builds[key]
    return ""


def stored_changes(found: Probe, model: nn.Module) -> dict[str, int]:
    """Fields no tensor shape sets but submodules store (``probe``'s copies), where every copy in ``model`` now says a new value.

    A prune's fix-up sets such a count from the weights (BERT's attention ``num_attention_heads`` after whole heads
    went); a proposal then carries it, and the rebuild decides.
    """
    modules = dict(model.named_modules())
    changes = {}
    for field, where in found.copies.items():
        now = {getattr(modules[name], key, None) for name, key in where if name in modules}
        value = now.pop() if len(now) == 1 else None
        if type(value) is int and value >= 1 and value != found.fields[field]:
            changes[field] = value
    return changes


def _best_proposal(model: nn.Module, config: Any, found: Probe, solutions: list[dict[str, int]],
                   depth: dict[str, Any]) -> tuple[dict[str, Any], _Verdict, dict[str, int]] | str:
    """The verified proposal with the fewest stale counts to set, as (fields to write, verdict, solution); or why none is.

    ``depth`` (the layer count and per-layer lists after removed layers) goes into every proposal.
    """
    best, reason = None, None
    shortened = list(shortened_lists(model, found)) if depth else []
    for values in solutions:
        kept_unset = {f: found.fields[f] for f in found.unset if f not in values}
        for widths in (values, {**values, **kept_unset}):  # a field the config leaves unset is added only if it is needed
            if widths is not values and not kept_unset:
                break
            attempt = {**widths, **depth}
            candidate = copy.deepcopy(config)
            for field, value in attempt.items():
                set_field(candidate, field, value)
            verdict = _verify(model, candidate, found, shortened)
            if not verdict.differences:
                if best is None or len(verdict.stale) < len(best[1].stale):
                    best = (attempt, verdict, values)
                break
            reason = reason or (f"{type(config).__name__} cannot describe these sizes: with "
                                f"{', '.join(f'{k}={v}' for k, v in attempt.items()) or 'its current values'} "
                                f"it builds {verdict.differences[0]}")
        if best is not None and not best[1].stale:
            break
    return best if best is not None else reason or ""


def check_config(model: nn.Module) -> list[str]:
    """How the model ``model.config`` builds differs from ``model`` (shapes, stored sizes); empty when it describes it exactly.

    Builds ``type(model)`` from the config on the meta device, so it costs no
    memory for weights. The result is cached per model until a shape or the
    config changes.
    """
    config = getattr(model, "config", None)
    if config is None:
        return [f"{type(model).__name__} has no config"]
    signature = (tuple(tensor_shapes(model).items()), config.to_json_string(use_diff=False))
    cached = _checked.get(model)
    if cached is not None and cached[0] == signature:
        return list(cached[1])
    differences = _differences_from(model, config)
    _checked[model] = (signature, differences)
    return list(differences)


def warn_if_unexpressed(model: nn.Module) -> None:
    """Warn (once per model and situation) if ``model.config`` cannot rebuild ``model``; the export hook calls this."""
    differences = check_config(model)
    if not differences:
        return
    config = model.config
    marker = getattr(config, MARKER, None)
    why = marker.get("reason") if isinstance(marker, dict) else None
    if why is None:  # not marked: the config is stale (a prune was undone after the fix-up had updated it)
        why = ("it builds " + "; ".join(differences[:3]) + (f" (and {len(differences) - 3} more)" if len(differences) > 3 else "")
               + "; pruneframe_transformers.sync_config(model) brings it up to date if it can")
    else:
        uneven = {f: p for f, p in layer_sizes(model).items() if len({v for _, v in p}) > 1}
        if uneven:  # name the layers with this model's module names
            why = "the layers differ: " + "; ".join(f"{field}: {_per_layer(pairs)}" for field, pairs in uneven.items())
    message = (
        f"model.config ({type(config).__name__}) does not describe this pruned {type(model).__name__}: {why}. "
        "save_pretrained writes weights that AutoModel.from_pretrained cannot rebuild from that config: it stops "
        "with a size mismatch (with ignore_mismatched_sizes=True it would re-initialise those layers). Keep the "
        "pruning plan instead: torch.save(pruneframe.state_dict(model), path), then build the model from its "
        "original config and call pruneframe.load_state_dict(model, state_dict=torch.load(path))."
    )
    seen = _warned.setdefault(model, set())
    if message not in seen:
        seen.add(message)
        warnings.warn(message, ConfigMismatchWarning, stacklevel=3)


def install_export_check(model: nn.Module) -> None:
    """Make ``model.state_dict()`` (and so ``save_pretrained``) warn when the config cannot rebuild the model. Idempotent."""
    hooks = getattr(model, "_state_dict_hooks", {})
    if any(hook is _export_hook for hook in hooks.values()):
        return
    if hasattr(model, "register_state_dict_post_hook"):
        model.register_state_dict_post_hook(_export_hook)
    else:  # torch < 2.5 has only the private spelling
        model._register_state_dict_hook(_export_hook)


def _export_hook(module: nn.Module, state_dict: Any, prefix: str, local_metadata: Any) -> None:
    if prefix or enclosing_model(module) is not None:  # part of an enclosing model: that one is checked
        return
    warn_if_unexpressed(module)


def enclosing_model(model: nn.Module) -> nn.Module | None:
    """The model ``model`` was last found nested in (sharing its config), if that one still holds it."""
    ref = _enclosing.get(model)
    outer = ref() if ref is not None else None
    if outer is None or not _shares_config(outer, model):
        return None
    if not any(sub is model for sub in outer.modules()):
        return None
    return outer


def _shares_config(outer: nn.Module, inner: nn.Module) -> bool:
    """Whether ``inner``'s config is ``outer``'s or one nested in it (a CLIP model's text model and ``text_config``)."""
    config, own = getattr(outer, "config", None), getattr(inner, "config", None)
    if config is None or own is None:
        return False
    return own is config or any(own is nested for _, nested in nested_configs(config))


def _unexpressed(config: Any, sizes: dict[str, list[tuple[str, int]]], reason: str) -> ConfigStatus:
    """Leave the size fields alone and record, in the config, the sizes it cannot hold and why."""
    record = {field: [v for _, v in pairs] for field, pairs in sizes.items()
              if len({v for _, v in pairs}) > 1 or get_field(config, field) != pairs[0][1]}
    setattr(config, MARKER, {"reason": reason, "sizes": record,
                             "load_with": "pruneframe.load_state_dict and the pruning plan (pruneframe.state_dict)"})
    return ConfigStatus(False, {}, sizes, reason)


def _per_block(found: Probe, table: list[Any], changes: dict[str, int]) -> dict[str, list[tuple[str, int]]]:
    """Per field, (block, value) for every block with a dimension the field sizes, under the solution ``changes``."""
    sizes: dict[str, list[tuple[str, int]]] = {}
    seen = set()
    for row in table:
        for field, _ in row.coefficients:
            if (field, row.block) not in seen:
                seen.add((field, row.block))
                sizes.setdefault(field, []).append((row.block, changes.get(field, found.fields[field])))
    return sizes


def _per_layer(pairs: list[tuple[str, int]]) -> str:
    return ", ".join(f"{name or '(model)'}={value}" for name, value in pairs)


def _verify(model: nn.Module, config: Any, found: Probe, shortened: list[str]) -> _Verdict:
    """Build ``type(model)`` from ``config`` on the meta device and compare; a count still at the old config's value is stale.

    The blocks of the lists in ``shortened`` (which lost layers) are compared in every plain value they store too.
    """
    try:
        built = build_on_meta(type(model), config)
    # a probe: whatever validation or the model's constructor raises means the config cannot rebuild the model, and says why
    except Exception as exc:  # noqa: BLE001
        return _Verdict([_unbuildable(model, exc)], [])
    differences = _shape_differences(model, built) + block_differences(model, built, shortened)
    stale = []
    built_attributes = size_attributes(built)
    for name, module, other in _common_modules(model, built, differences):
        before = found.attributes.get(name, {})
        for key, value, built_value in _attribute_differences(module, built_attributes[name]):
            # (a flag too: a model that lost its last sliding-window layer no longer has one)
            if type(value) in (int, bool) and type(built_value) is type(value) and before.get(key, MISSING) == value:
                stale.append((name, key, built_value))
            else:
                differences.append(f"{name or '(model)'}.{key} = {built_value} where the model has {value}")
    return _Verdict(differences, stale)


def _differences_from(model: nn.Module, config: Any) -> list[str]:
    """Build ``type(model)`` from (a copy of) ``config`` on the meta device; list where it differs from ``model``."""
    try:
        built = build_on_meta(type(model), config)
    # a probe: whatever validation or the model's constructor raises means the config cannot rebuild the model, and says why
    except Exception as exc:  # noqa: BLE001
        return [_unbuildable(model, exc)]
    differences = _shape_differences(model, built)
    built_attributes = size_attributes(built)
    for name, module, _ in _common_modules(model, built, differences):
        for key, value, built_value in _attribute_differences(module, built_attributes[name]):
            differences.append(f"{name or '(model)'}.{key} = {built_value} where the model has {value}")
    return differences


def _unbuildable(model: nn.Module, exc: Exception) -> str:
    lines = str(exc).strip().splitlines() or [""]
    return f"no model: {type(model).__name__} cannot be built from it ({type(exc).__name__}: {lines[-1].strip()})"


def _shape_differences(model: nn.Module, built: nn.Module) -> list[str]:
    # Sizes are compared where both models have the thing: pruning shrinks tensors, it never adds or removes one,
    # and a part only one side has (a pooler the model was built without) is not something a config field sizes.
    # Whole blocks are the exception: a list of layers must have the same length in both.
    actual, expected = tensor_shapes(model), tensor_shapes(built)
    return length_differences(model, built) + [f"{name} of shape {expected[name]} where the model has {actual[name]}"
                                               for name in sorted(actual.keys() & expected.keys()) if actual[name] != expected[name]]


def _common_modules(model: nn.Module, built: nn.Module, differences: list[str]) -> list[tuple[str, nn.Module, nn.Module]]:
    """The submodules both models have under one name; a name holding different classes is added to ``differences``."""
    built_modules = dict(built.named_modules())
    common = []
    for name, module in model.named_modules():
        other = built_modules.get(name)
        if other is None:
            continue
        if type(other) is not type(module):
            differences.append(f"a {type(other).__name__} at {name or '(model)'} where the model has a {type(module).__name__}")
            continue
        common.append((name, module, other))
    return common


def _attribute_differences(module: nn.Module, built: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(attribute, model's value, rebuilt value) for every stored number of ``module`` the rebuilt module holds differently."""
    out = []
    for key, value in vars(module).items():
        if key.startswith("_") or key == "training" or type(value) not in (int, float, bool):
            continue
        built_value = built.get(key, MISSING)
        if built_value is not MISSING and built_value != value:
            out.append((key, value, built_value))
    return out
