"""The plain-data attributes a pruning plan saves with the weights (``model.my_tag = "x"``, a size the forward reads).

Only plain data is saved -- numbers, strings, booleans, None, and lists,
tuples and string-keyed dicts of those -- so everything loads with
``torch.load(weights_only=True)``. Callables and names starting with ``_`` are
code, not state; ``training`` is left as the fresh model has it.
"""
from __future__ import annotations

import copy
import warnings
from typing import Any

from torch import nn

from .errors import PruningError

PLAIN_SCALARS = (type(None), bool, int, float, str)
SKIPPED = ("training",)


def plain_data(value: Any) -> bool:
    """Whether ``value`` is plain data that ``torch.load(weights_only=True)`` reads back exactly (exact types only)."""
    kind = type(value)
    if kind in PLAIN_SCALARS:
        return True
    if kind in (list, tuple):
        return all(plain_data(v) for v in value)
    if kind is dict:
        return all(type(k) is str and plain_data(v) for k, v in value.items())
    return False


def attributes_of(model: nn.Module) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, str]]]:
    """Per module name: its plain-data attributes (copied), and the type names of the data attributes that are not plain."""
    saved: dict[str, dict[str, Any]] = {}
    unsaved: dict[str, dict[str, str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        mine, skipped = {}, {}
        for attr, value in vars(module).items():
            if attr.startswith("_") or attr in SKIPPED or callable(value):
                continue
            if plain_data(value):
                mine[attr] = copy.deepcopy(value)
            else:
                skipped[attr] = type(value).__name__
        if mine:
            saved[name] = mine
        if skipped:
            unsaved[name] = skipped
    return saved, unsaved


def check_attributes(model: nn.Module, attributes: Any) -> list[tuple[nn.Module, str, Any]]:
    """The (module, name, value) assignments ``attributes`` asks for; raises, before anything changes, if one cannot apply."""
    if not isinstance(attributes, dict):
        raise ValueError(f"the saved 'attributes' are a {type(attributes).__name__}, not a dict; the file is damaged")
    modules = dict(model.named_modules(remove_duplicate=False))
    found = []
    for name, values in attributes.items():
        module = modules.get(name)
        if module is None:
            raise PruningError(f"attributes were saved for a module {name!r}, which the model does not have; the state "
                               "dict is for another architecture. The model was left as it was.")
        if not isinstance(values, dict) or not all(isinstance(k, str) and plain_data(v) for k, v in values.items()):
            raise ValueError(f"the saved attributes of module {name!r} are not plain data; the file is damaged")
        for attr, value in values.items():
            if attr in module._parameters or attr in module._buffers or attr in module._modules:
                raise PruningError(f"the saved attribute {name or '(model)'}.{attr} is a plain value, but {attr!r} is a "
                                   "parameter, buffer or submodule of this model; the state dict is for another architecture. "
                                   "The model was left as it was.")
            found.append((module, attr, value))
    return found


def warn_unsaved(model: nn.Module, unsaved: Any) -> None:
    """Warn of attributes that were not saved (not plain data) and that the freshly built model does not have either."""
    modules = dict(model.named_modules(remove_duplicate=False))
    missing = [f"{name + '.' if name else ''}{attr} ({kind})" for name, attrs_ in (unsaved or {}).items()
               for attr, kind in (attrs_ or {}).items() if name in modules and attr not in vars(modules[name])]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        warnings.warn(f"these attributes were not saved, only plain data is (numbers, strings, lists, tuples, dicts): {shown}. "
                      "Set them again on the loaded model.", stacklevel=3)


__all__ = ["attributes_of", "check_attributes", "plain_data", "warn_unsaved"]
