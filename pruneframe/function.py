"""Torch-Pruning's ``tp.function``: the layer pruner classes and the functional names, backed by the plugins.

Every name here resolves, when first read, to what the loaded plugins
registered -- nothing is a copy. ``LinearPruner`` is the class of the pruner a
plugin registered as ``"linear"``, so subclassing it and registering the
subclass works as in Torch-Pruning::

    class MyLinearPruner(tp.function.LinearPruner):
        def prune_out_channels(self, layer, idxs):
            ...                                    # your own bookkeeping
            return super().prune_out_channels(layer, idxs)

    DG.register_customized_layer(nn.Linear, MyLinearPruner())

``prune_conv_out_channels`` and the other functional names are the very
functions ``pruneframe.prune_conv_out_channels`` gives. ``PrunerBox`` maps a
registration name (``"conv"``, ``"linear"``, ...) or a layer type to the
registered pruner instance (Torch-Pruning keys it by ``ops.OPTYPE``).

Torch-Pruning's ``DepthwiseConvPruner`` is the conv pruner here: it tells a
depthwise convolution by its shape. ``LSTMPruner`` prunes LSTM, GRU and RNN.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from .layer_pruner import BasePruningFunc, DeclarativeLayerPruner, LayerPruner

# Torch-Pruning's class names -> the name the built-in plugin registers its pruner under
TORCH_PRUNING_CLASSES = {
    "ConvPruner": "conv",
    "DepthwiseConvPruner": "depthwise_conv",
    "LinearPruner": "linear",
    "BatchnormPruner": "batchnorm",
    "LayernormPruner": "layernorm",
    "GroupNormPruner": "groupnorm",
    "InstanceNormPruner": "instancenorm",
    "PReLUPruner": "prelu",
    "EmbeddingPruner": "embedding",
    "LSTMPruner": "lstm",
    "ParameterPruner": "parameter",
    "MultiheadAttentionPruner": "multihead_attention",
}


def _registry() -> Any:
    from .registry import get_registry

    return get_registry()


def registered_pruner(name: str) -> Any:
    """The pruner instance registered under ``name`` by the plugin of highest precedence; raises if none is."""
    registry = _registry()
    for entry in registry.layer_pruners:  # in order of precedence
        if entry.name == name:
            return entry.pruner
    known = sorted({e.name for e in registry.layer_pruners if e.name})
    raise KeyError(f"no installed plugin registers a layer pruner named {name!r}. Known: {', '.join(known)}")


def pruner_class(name: str) -> type:
    """The class of a registered layer pruner, by Torch-Pruning's class name or by the plugin class's own name."""
    if name in TORCH_PRUNING_CLASSES:
        try:
            return type(registered_pruner(TORCH_PRUNING_CLASSES[name]))
        except KeyError as exc:
            raise AttributeError(f"pruneframe.function.{name}: {exc.args[0]}") from None
    for entry in _registry().layer_pruners:
        if type(entry.pruner).__name__ == name:
            return type(entry.pruner)
    raise AttributeError(f"module 'pruneframe.function' has no attribute {name!r}")


class _PrunerBox(Mapping):
    """The registered layer pruners, by registration name (``"conv"``) or by layer type (``nn.Conv2d``)."""

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, type):
            found = _registry().layer_pruner(key)
            if found is None:
                raise KeyError(f"no installed plugin prunes {key.__qualname__}")
            return found
        return registered_pruner(key)

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys(e.name for e in _registry().layer_pruners if e.name))

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __repr__(self) -> str:
        return "PrunerBox(" + ", ".join(self) + ")"


PrunerBox = _PrunerBox()


def __getattr__(name: str) -> Any:
    if name.startswith("prune_") and name.endswith("_channels"):
        registry = _registry()
        fn = registry.functional(name)
        if fn is None:
            raise AttributeError(f"pruneframe.function has no {name!r}: no installed plugin provides it. "
                                 f"Known: {', '.join(registry.functional_names())}")
        return fn
    if name.endswith("Pruner"):
        return pruner_class(name)
    raise AttributeError(f"module 'pruneframe.function' has no attribute {name!r}")


def __dir__() -> list[str]:
    registry = _registry()
    own = {type(e.pruner).__name__ for e in registry.layer_pruners}
    return sorted(set(globals()) | set(TORCH_PRUNING_CLASSES) | own | set(registry.functional_names()))


__all__ = ["BasePruningFunc", "DeclarativeLayerPruner", "LayerPruner", "PrunerBox", "TORCH_PRUNING_CLASSES", "pruner_class",
           "registered_pruner"]
