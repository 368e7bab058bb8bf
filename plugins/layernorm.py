"""Layer pruner for ``nn.LayerNorm``: prunes the first normalised dimension (the features of (..., C) inputs).

Normalisation runs across the pruned channels, so a pruned model is not
exactly the masked original (statistics change); shapes, forward and backward
are what tests check.
"""
from __future__ import annotations

from torch import nn

from pruneframe import ChannelDim, DeclarativeLayerPruner, TensorDims, hookimpl


def _channel_dim(layer: nn.LayerNorm, t) -> int | None:
    """The dim holding the C of normalized_shape=(C, ...): where LayerNorm puts it, else the one dim of size C."""
    c = layer.normalized_shape[0]
    dim = t.dim() - len(layer.normalized_shape)
    if dim >= 0 and t.shape[dim] == c:
        return dim
    matches = [d for d in range(t.dim()) if t.shape[d] == c]
    return matches[0] if len(matches) == 1 else None  # a subclass that permutes (e.g. LayerNorm2d)


class LayerNormPruner(DeclarativeLayerPruner):
    tensors = (TensorDims("weight", out=0), TensorDims("bias", out=0))
    out_attrs = ("normalized_shape",)
    coupled = True

    def output_channel_dims(self, layer, outputs):
        dim = _channel_dim(layer, outputs[0])
        return [ChannelDim(dim) if dim is not None else None] + [None] * (len(outputs) - 1)

    def input_channel_dims(self, layer, inputs):
        dim = _channel_dim(layer, inputs[0])
        return [ChannelDim(dim) if dim is not None else None] + [None] * (len(inputs) - 1)


@hookimpl(trylast=True)
def pruneframe_layer_pruners(register):
    register(LayerNormPruner(), [nn.LayerNorm], name="layernorm")
