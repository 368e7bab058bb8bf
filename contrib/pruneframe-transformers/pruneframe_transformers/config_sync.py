"""Keep a pruned Hugging Face model's ``config`` describing it, or say clearly that it cannot.

``sync_config(model)`` (the fix-up pruneframe runs after every prune and on
plan replay) reads the sizes every known layer implies from its current weight
shapes (see ``families``). When every layer agrees, it proposes the config
update and *verifies* it: the model class is built from the updated config on
the meta device (no memory, no arithmetic) and must match the pruned model in
every parameter and buffer shape and every number a submodule stores (head
counts, head widths, split sizes). Only a verified update is written, so
``save_pretrained`` + ``from_pretrained`` rebuilds exactly this model.

When the layers disagree (a non-uniform prune), or the config class has no way
to say the sizes (BERT and GPT-2 derive the head width from ``hidden_size /
num_attention_heads``, so fewer heads of the same width cannot be written), the
size fields are left as they are: they still describe the last model they
described exactly, every prune since then shrank some weight, so
``from_pretrained`` on a ``save_pretrained`` copy stops with a size mismatch
instead of loading a wrong model. The config gets an entry
``pruneframe_unexpressed`` (saved in ``config.json``) listing the per-layer
sizes, and exporting the weights (``model.state_dict()``, which
``save_pretrained`` calls) warns once with a ``ConfigMismatchWarning`` naming
the layers, pointing to ``pruneframe.state_dict`` / ``pruneframe.load_state_dict``.
The warning waits for the export because a prune of every layer alike passes
through non-uniform states between its groups.
"""
from __future__ import annotations

import copy
import itertools
import logging
import warnings
import weakref
from contextlib import contextmanager
from typing import Any, Iterator

import attrs
import torch
from torch import nn

from .families import family_of, missing_needs

MARKER = "pruneframe_unexpressed"
_MISSING = object()
_SIZE_TYPES = (int, float, bool)

# per model: the export warnings already given, and the last verification (signature, differences)
_warned: "weakref.WeakKeyDictionary[nn.Module, set[str]]" = weakref.WeakKeyDictionary()
_checked: "weakref.WeakKeyDictionary[nn.Module, tuple[Any, list[str]]]" = weakref.WeakKeyDictionary()
# nested model -> the model it was found in, sharing its config
_enclosing: "weakref.WeakKeyDictionary[nn.Module, weakref.ref[nn.Module]]" = weakref.WeakKeyDictionary()


class ConfigMismatchWarning(UserWarning):
    """``model.config`` does not describe the pruned model: ``from_pretrained`` cannot rebuild it from a ``save_pretrained`` copy."""


@attrs.frozen
class ConfigStatus:
    """What ``sync_config`` found: whether the config now describes the model, what it changed, and what differs.

    ``sizes`` maps each config field to the (module name, value) pairs the layers imply.
    """

    describes_model: bool
    changed: dict[str, Any]
    sizes: dict[str, list[tuple[str, int]]]
    reason: str | None


def layer_sizes(model: nn.Module) -> dict[str, list[tuple[str, int]]]:
    """Per config field, the value each known layer of ``model`` implies from its weight shapes, in module order."""
    found: dict[str, list[tuple[str, int]]] = {}
    for name, module in model.named_modules():
        family = family_of(module)
        if family is None or missing_needs(module, family):
            continue
        for field, value in family.sizes(module).items():
            found.setdefault(field, []).append((name, int(value)))
    return found


def fix_modules(model: nn.Module) -> None:
    """Run every known submodule's fix-up (idempotent): stored head counts and widths follow the weights."""
    for module in model.modules():
        family = family_of(module)
        if family is not None and family.fixup is not None and not missing_needs(module, family):
            family.fixup(module)


def sync_config(model: nn.Module) -> ConfigStatus:
    """Update ``model.config`` to the pruned sizes when it can describe them exactly; otherwise mark it (see the module docstring).

    A model nested in another one that shares its config (``LlamaModel`` in
    ``LlamaForCausalLM``) is left to the enclosing one, which pruneframe fixes
    first: built on its own the nested class may differ (a ViTModel gets a pooler).
    """
    config = getattr(model, "config", None)
    if config is None:
        return ConfigStatus(False, {}, {}, f"{type(model).__name__} has no config")
    outer = enclosing_model(model)
    if outer is not None:
        return sync_config(outer)
    for module in model.modules():
        if module is not model and getattr(module, "config", None) is config and hasattr(module, "_from_config"):
            _enclosing[module] = weakref.ref(model)
    fix_modules(model)
    sizes = layer_sizes(model)
    uneven = {field: pairs for field, pairs in sizes.items() if len({v for _, v in pairs}) > 1}
    if uneven:  # (the reason names no modules: a model nested in another one shares its config)
        listed = "; ".join(f"{field} is {[v for _, v in pairs]}" for field, pairs in uneven.items())
        return _unexpressed(config, sizes, f"the layers differ ({listed}, layer by layer) and "
                                           f"{type(config).__name__} holds one value per field")
    uniform = {field: pairs[0][1] for field, pairs in sizes.items()}
    changes = {f: v for f, v in uniform.items() if getattr(config, f, _MISSING) is not _MISSING and getattr(config, f) != v}
    additions = {f: v for f, v in uniform.items() if getattr(config, f, _MISSING) is _MISSING}
    reason = None
    for attempt in (changes, {**changes, **additions}):  # a field the config lacks is added only if it is needed
        if attempt is not changes and not additions:
            break
        candidate = copy.deepcopy(config)
        for field, value in attempt.items():
            setattr(candidate, field, value)
        differences = _differences_from(model, candidate)
        if not differences:
            for field, value in attempt.items():
                setattr(config, field, value)
            if hasattr(config, MARKER):
                delattr(config, MARKER)
            return ConfigStatus(True, attempt, sizes, None)
        reason = reason or (
            f"{type(config).__name__} cannot describe these sizes: with "
            f"{', '.join(f'{k}={v}' for k, v in attempt.items()) or 'its current values'} it builds {differences[0]}"
        )
    return _unexpressed(config, sizes, reason or "")


def check_config(model: nn.Module) -> list[str]:
    """How the model ``model.config`` builds differs from ``model`` (shapes, stored sizes); empty when it describes it exactly.

    Builds ``type(model)`` from the config on the meta device, so it costs no
    memory for weights. The result is cached per model until a shape or the
    config changes.
    """
    config = getattr(model, "config", None)
    if config is None:
        return [f"{type(model).__name__} has no config"]
    signature = (_shapes(model), config.to_json_string(use_diff=False))
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
    if outer is None or getattr(outer, "config", None) is not getattr(model, "config", None):
        return None
    if not any(sub is model for sub in outer.modules()):
        return None
    return outer


def _unexpressed(config: Any, sizes: dict[str, list[tuple[str, int]]], reason: str) -> ConfigStatus:
    """Leave the size fields alone and record, in the config, the sizes it cannot hold and why."""
    record = {field: [v for _, v in pairs] for field, pairs in sizes.items()
              if len({v for _, v in pairs}) > 1 or getattr(config, field, _MISSING) != pairs[0][1]}
    setattr(config, MARKER, {"reason": reason, "sizes": record,
                             "load_with": "pruneframe.load_state_dict and the pruning plan (pruneframe.state_dict)"})
    return ConfigStatus(False, {}, sizes, reason)


def _per_layer(pairs: list[tuple[str, int]]) -> str:
    return ", ".join(f"{name or '(model)'}={value}" for name, value in pairs)


def _shapes(model: nn.Module) -> tuple[tuple[str, tuple[int, ...]], ...]:
    tensors = itertools.chain(model.named_parameters(remove_duplicate=False), model.named_buffers(remove_duplicate=False))
    return tuple((name, tuple(t.shape)) for name, t in tensors)


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence transformers' logging while a throw-away model is built."""
    logger = logging.getLogger("transformers")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _differences_from(model: nn.Module, config: Any) -> list[str]:
    """Build ``type(model)`` from (a copy of) ``config`` on the meta device; list where it differs from ``model``."""
    config = copy.deepcopy(config)  # building writes into the config it is given (its dtype, the attention backend)
    validate = getattr(config, "validate", None)
    if callable(validate):
        try:
            validate()
        # the strict config's own check (huggingface_hub's errors are not ValueErrors); its message is the answer
        except Exception as exc:  # noqa: BLE001
            return [f"a config that fails its own validation ({str(exc).strip().splitlines()[-1].strip()})"]
    try:
        with torch.device("meta"), _quiet(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            built = type(model)._from_config(config)
    # a probe: whatever the model's constructor raises means the config cannot rebuild the model, and says why
    except Exception as exc:  # noqa: BLE001
        return [f"no model: {type(model).__name__} cannot be built from it ({type(exc).__name__}: {exc})"]
    # Sizes are compared where both models have the thing: pruning shrinks tensors, it never adds or removes one,
    # and a part only one side has (a pooler the model was built without) is not something a config field sizes.
    differences = []
    actual, expected = dict(_shapes(model)), dict(_shapes(built))
    for name in sorted(actual.keys() & expected.keys()):
        if actual[name] != expected[name]:
            differences.append(f"{name} of shape {expected[name]} where the model has {actual[name]}")
    built_modules = dict(built.named_modules())
    for name, module in model.named_modules():
        other = built_modules.get(name)
        if other is None:
            continue
        if type(other) is not type(module):
            differences.append(f"a {type(other).__name__} at {name or '(model)'} where the model has a {type(module).__name__}")
            continue
        for key, value in vars(module).items():
            if key.startswith("_") or key == "training" or type(value) not in _SIZE_TYPES:
                continue
            built_value = vars(other).get(key, _MISSING)
            if built_value is not _MISSING and built_value != value:
                differences.append(f"{name or '(model)'}.{key} = {built_value} where the model has {value}")
    return differences
