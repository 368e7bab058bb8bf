"""Learn how a config's integer size fields set a model's tensor shapes, by building the model on the meta device.

``probe(model_class, config)`` builds ``model_class`` from ``config`` and from
copies with one field changed (doubled, or plus one when doubling makes the
config invalid) on the meta device: no memory for weights, a few milliseconds
for a small model. For every tensor dimension it records how fast it grows per
unit of each field (the *slope*); the config solver reads a pruned model's
shapes through these slopes. A field none of whose changes builds, or whose
change moves no tensor dimension, is left out. Size fields a config may leave
unset (``head_dim``, GPT-2's ``n_inner``: the model derives them) are probed at
two values to find the value that reproduces the model, so that they can be
written when the derived value would be wrong.

Results are cached per model class and config contents (``probe_cache_info``).
"""
from __future__ import annotations

import copy
import json
import logging
import re
import warnings
from collections import OrderedDict
from contextlib import contextmanager
from fractions import Fraction
from typing import Any, Iterator, NamedTuple

import attrs
import torch
from torch import nn

MISSING = object()
SIZE_TYPES = (int, float, bool)
MARKER = "pruneframe_unexpressed"

# integer entries that size something else than the channels a prune removes: vocabulary, positions, depth, ids, ...
_NOT_A_WIDTH = re.compile(r"vocab|position|layer|token_id|_id$|window|chunk|pretraining_tp|num_labels|n_ctx|"
                          r"image_size|patch_size|num_channels|bucket|^max_|seed|num_experts_per_tok|top_k")
# size fields a config may leave unset (None or absent) for the model to derive; probed at two values when unset
OPTIONAL_FIELDS = ("head_dim", "n_inner")
_UNSET_PROBES = (8, 16)
_CACHE_SIZE = 32

Shapes = dict[str, tuple[int, ...]]
Attributes = dict[str, dict[str, Any]]


class ProbeCacheInfo(NamedTuple):
    """How often ``probe`` answered from its cache (hits) or built models to learn (misses)."""

    hits: int
    misses: int
    size: int


@attrs.frozen
class Probe:
    """What building a model class from one config and its one-field variants showed.

    ``fields``: each probed field and its value (for an unset optional field, the
    value that reproduces the model); ``unset``: those optional fields; ``shapes``
    and ``attributes``: the model built from the config (tensor shapes; every
    int/float/bool a submodule stores); ``slopes``: per (tensor name, dimension),
    how much it grows per unit of each field that moves it; ``copies``: per field,
    the submodule attributes that store its value as it is (BERT's
    ``num_attention_heads``, which moves no tensor dimension by itself).
    """

    fields: dict[str, int]
    unset: frozenset[str]
    shapes: Shapes
    attributes: Attributes
    slopes: dict[tuple[str, int], dict[str, Fraction]]
    copies: dict[str, list[tuple[str, str]]] = attrs.Factory(dict)  # field -> (module, attribute) storing its value


_cache: "OrderedDict[tuple[type, str], Probe]" = OrderedDict()
_stats = {"hits": 0, "misses": 0}


def probe_cache_info() -> ProbeCacheInfo:
    """Hits and misses of the probe cache since the process started (or ``probe_cache_clear``)."""
    return ProbeCacheInfo(_stats["hits"], _stats["misses"], len(_cache))


def probe_cache_clear() -> None:
    """Forget every probe (the next prune of each model class probes again)."""
    _cache.clear()
    _stats.update(hits=0, misses=0)


def get_field(config: Any, path: str) -> Any:
    """The value of ``path`` (``hidden_size``, ``text_config.hidden_size``) in ``config``, or ``MISSING``."""
    value = config
    for part in path.split("."):
        value = getattr(value, part, MISSING)
        if value is MISSING:
            return MISSING
    return value


def set_field(config: Any, path: str, value: Any) -> None:
    """Set ``path`` in ``config`` (its nested config must exist)."""
    *outer, last = path.split(".")
    target = config
    for part in outer:
        target = getattr(target, part)
    setattr(target, last, value)


def candidate_fields(config: Any) -> list[str]:
    """The integer size fields of ``config`` and of its nested configs (one level), by dotted name."""
    found = []
    for prefix, part in [("", config), *nested_configs(config)]:
        for key in part.to_dict():
            value = getattr(part, key, MISSING)
            if type(value) is int and value > 0 and not _NOT_A_WIDTH.search(key):
                found.append(prefix + key)
        for key in OPTIONAL_FIELDS:
            if getattr(part, key, None) is None and prefix + key not in found:
                found.append(prefix + key)
    return found


def tensor_shapes(model: nn.Module) -> Shapes:
    """Every parameter and buffer of ``model`` by name (tied ones under each name), with its shape."""
    tensors = [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]
    return {name: tuple(t.shape) for name, t in tensors}


def size_attributes(model: nn.Module) -> Attributes:
    """Per submodule name, the public int/float/bool attributes it stores (head counts, widths, split sizes, scalings)."""
    return {name: {k: v for k, v in vars(m).items() if not k.startswith("_") and k != "training" and type(v) in SIZE_TYPES}
            for name, m in model.named_modules()}


def build_on_meta(model_class: type, config: Any) -> nn.Module:
    """``model_class`` built from a copy of ``config`` on the meta device; raises what its constructor or validation raises."""
    config = copy.deepcopy(config)  # building writes into the config it is given (its dtype, the attention backend)
    if hasattr(config, MARKER):
        delattr(config, MARKER)
    validate = getattr(config, "validate", None)
    if callable(validate):
        validate()
    with torch.device("meta"), quiet(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model_class._from_config(config)


def probe(model_class: type, config: Any) -> Probe:
    """Learn (or take from the cache) how ``config``'s size fields set the shapes of ``model_class``; see the module docstring.

    Raises what building ``model_class`` from ``config`` itself raises.
    """
    key = (model_class, _contents(config))
    cached = _cache.get(key)
    if cached is not None:
        _stats["hits"] += 1
        _cache.move_to_end(key)
        return cached
    _stats["misses"] += 1
    found = _probe(model_class, config)
    _cache[key] = found
    while len(_cache) > _CACHE_SIZE:
        _cache.popitem(last=False)
    return found


def _probe(model_class: type, config: Any) -> Probe:
    base = build_on_meta(model_class, config)
    shapes, attributes = tensor_shapes(base), size_attributes(base)
    del base
    fields, unset, explicit = {}, set(), copy.deepcopy(config)
    variants: dict[str, tuple[int, Shapes]] = {}
    for name in candidate_fields(config):
        value = get_field(config, name)
        if value is MISSING or value is None:
            found = _unset_value(model_class, explicit, name, shapes)
            if found is not None:  # probe the other fields with it written, as a proposal would write it
                set_field(explicit, name, found)
                fields[name] = found
                unset.add(name)
        else:
            fields[name] = value
    copies: dict[str, list[tuple[str, str]]] = {}
    for name, value in fields.items():
        for trial in (2 * value, value + 1):
            built = _built_with(model_class, explicit, name, trial)
            if built is not None:
                variants[name] = (trial, built[0])
                copies[name] = _copies_of(attributes, built[1], value, trial)
                break
    slopes: dict[tuple[str, int], dict[str, Fraction]] = {}
    for name, (trial, varied) in variants.items():
        step = trial - fields[name]
        for tensor, shape in shapes.items():
            other = varied.get(tensor)
            if other is None or len(other) != len(shape):
                continue
            for dim, (before, after) in enumerate(zip(shape, other)):
                if before != after:
                    slopes.setdefault((tensor, dim), {})[name] = Fraction(after - before, step)
    moved = {f for row in slopes.values() for f in row}
    stored = {f for f, where in copies.items() if where}
    return Probe({f: v for f, v in fields.items() if f in moved | stored}, frozenset(unset & moved), shapes, attributes, slopes,
                 {f: where for f, where in copies.items() if where})


def _copies_of(base: Attributes, varied: Attributes, value: int, trial: int) -> list[tuple[str, str]]:
    """The (module, attribute) pairs that hold the field's value in the base model and its trial value in the variant."""
    return [(module, key) for module, stored in base.items() for key, v in stored.items()
            if type(v) is int and v == value and varied.get(module, {}).get(key) == trial]


def _unset_value(model_class: type, config: Any, name: str, shapes: Shapes) -> int | None:
    """The value of the unset field ``name`` that builds exactly ``shapes``, found by building at two values; None if none."""
    low, high = (_shapes_with(model_class, config, name, v) for v in _UNSET_PROBES)
    if low is None or high is None:
        return None
    implied = set()
    for tensor, shape in shapes.items():
        a, b = low.get(tensor), high.get(tensor)
        if a is None or b is None or len(a) != len(shape) or len(b) != len(shape):
            continue
        for dim, base in enumerate(shape):
            if a[dim] != b[dim]:
                implied.add(_UNSET_PROBES[0] + Fraction((base - a[dim]) * (_UNSET_PROBES[1] - _UNSET_PROBES[0]), b[dim] - a[dim]))
    if len(implied) != 1:  # nothing moves (the field is not read), or no single value explains the model
        return None
    value = implied.pop()
    if value.denominator != 1 or value < 1:
        return None
    built = low if value == _UNSET_PROBES[0] else high if value == _UNSET_PROBES[1] else _shapes_with(model_class, config, name, int(value))
    return int(value) if built == shapes else None


def _shapes_with(model_class: type, config: Any, name: str, value: int) -> Shapes | None:
    """Tensor shapes of ``model_class`` built with field ``name`` set to ``value``; None when that config does not build."""
    built = _built_with(model_class, config, name, value)
    return None if built is None else built[0]


def _built_with(model_class: type, config: Any, name: str, value: int) -> tuple[Shapes, Attributes] | None:
    """Tensor shapes and stored sizes of ``model_class`` built with ``name`` set to ``value``; None when it does not build."""
    varied = copy.deepcopy(config)
    set_field(varied, name, value)
    try:
        model = build_on_meta(model_class, varied)
    # a probe: any error of the config's validation or the model's constructor means "this value does not build"
    except Exception:  # noqa: BLE001
        return None
    return tensor_shapes(model), size_attributes(model)


def nested_configs(config: Any) -> list[tuple[str, Any]]:
    """The configs nested in ``config`` (``text_config``, ``vision_config``, ...), with their dotted prefix."""
    from transformers import PretrainedConfig

    nested = []
    for key in config.to_dict():
        value = getattr(config, key, None)
        if isinstance(value, PretrainedConfig):
            nested.append((key + ".", value))
    return nested


def _contents(config: Any) -> str:
    values = config.to_dict()
    values.pop(MARKER, None)
    return json.dumps(values, sort_keys=True, default=str)


@contextmanager
def quiet() -> Iterator[None]:
    """Silence transformers' logging while a throw-away model is built."""
    logger = logging.getLogger("transformers")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
