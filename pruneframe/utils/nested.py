"""``flatten_as_list``: the leaves of a model's nested output, in order."""
from __future__ import annotations

from typing import Any


def flatten_as_list(obj: Any) -> list[Any]:
    """Every leaf of ``obj`` through tuples, lists (named tuples too) and dicts (their values), in order.

    A tensor or any other non-container is a leaf, so ``flatten_as_list(t)`` is ``[t]``. (Torch-Pruning returns a
    non-container other than a tensor as it is, not in a list; here the answer is always a list.)
    """
    found: list[Any] = []
    _collect(obj, found)
    return found


def _collect(obj: Any, found: list[Any]) -> None:
    if isinstance(obj, dict):
        for value in obj.values():
            _collect(value, found)
    elif isinstance(obj, (tuple, list)):
        for value in obj:
            _collect(value, found)
    else:
        found.append(obj)


__all__ = ["flatten_as_list"]
