"""The pruneframe plugin for ``CustomizedLayer``, found through the ``pruneframe.plugins`` entry point ``example``.

``DeclarativeLayerPruner`` cannot say this layer: its table names tensors of
the layer itself (``getattr(layer, name)``) and resizes the layer's own
attributes, while a ``CustomizedLayer`` channel also lives in the nested
``fc.weight`` (row *and* column), ``fc.bias`` and ``fc.in_features`` /
``fc.out_features``. So the pruner is a short ``BasePruningFunc`` driven by the
same kind of table, with dotted paths resolved to the submodule that owns them.
"""
from __future__ import annotations

from typing import Sequence

from torch import nn

import pruneframe
from pruneframe import BasePruningFunc, TensorDims
from pruneframe.hookspecs import RegisterLayerPruner
from pruneframe.layer_pruner import keep_index, select_, validate_idxs

from .layer import CustomizedLayer


def _owner(layer: nn.Module, path: str) -> tuple[nn.Module, str]:
    """The submodule holding the tensor or attribute at a dotted ``path``, and its name there."""
    parent, _, name = path.rpartition(".")
    return (layer.get_submodule(parent) if parent else layer), name


class CustomizedLayerPruner(BasePruningFunc):
    """Prunes a ``CustomizedLayer``: its input and output are one channel space, so both go at once.

    The layer L2-normalises across its channels, so a pruned layer is not
    exactly the masked original (the norm changes); check it by shapes and
    kept values, not with ``pruneframe.testing``'s equivalence checker.
    """

    #: where each channel lives; every listed dim loses the pruned channels
    tensors: tuple[TensorDims, ...] = (
        TensorDims("scale", out=0),
        TensorDims("bias", out=0),
        TensorDims("fc.weight", out=0, in_=1),
        TensorDims("fc.bias", out=0),
    )
    #: attributes that hold the width, all kept equal
    size_attrs: tuple[str, ...] = ("in_dim", "fc.in_features", "fc.out_features")

    def get_out_channels(self, layer: CustomizedLayer) -> int:
        return layer.in_dim

    def get_in_channels(self, layer: CustomizedLayer) -> int:
        return layer.in_dim

    def prune_out_channels(self, layer: CustomizedLayer, idxs: Sequence[int]) -> CustomizedLayer:
        """Remove channels ``idxs`` from every tensor and size attribute of ``layer``."""
        n = layer.in_dim
        index = validate_idxs(layer, idxs, n, "channel")
        keep = keep_index(n, index)
        for spec in self.tensors:
            owner, name = _owner(layer, spec.name)
            for dim in (spec.out, spec.in_):
                if dim is not None:
                    # select_ replaces .data, so a failed group prune can restore the originals
                    select_(owner, name, dim, keep)
        for path in self.size_attrs:
            owner, name = _owner(layer, path)
            setattr(owner, name, n - index.numel())
        return layer

    # input channel i *is* output channel i: pruning either prunes both
    prune_in_channels = prune_out_channels

    def in_out_coupled(self, layer: nn.Module) -> bool:
        return True


@pruneframe.hookimpl
def pruneframe_layer_pruners(register: RegisterLayerPruner) -> None:
    """Register the ``CustomizedLayer`` pruner; it also provides ``pruneframe.prune_customized_layer_{out,in}_channels``."""
    register(CustomizedLayerPruner(), [CustomizedLayer], name="customized_layer")
