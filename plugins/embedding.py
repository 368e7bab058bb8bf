"""Layer pruner for ``nn.Embedding``: output channels are the embedding dim; token ids carry no channels.

``prune_embedding_in_channels`` prunes the same embedding dim, as in
Torch-Pruning.
"""
from __future__ import annotations

from torch import nn

from pruneframe import DeclarativeLayerPruner, TensorDims, hookimpl


class EmbeddingPruner(DeclarativeLayerPruner):
    tensors = (TensorDims("weight", out=1),)
    out_attrs = ("embedding_dim",)
    coupled = True
    output_dim = -1

    def input_channel_dims(self, layer, inputs):
        return [None] * len(inputs)  # token ids, not channels

    def couplings(self, layer, n_out, n_in):
        return []


@hookimpl(trylast=True)
def pruneframe_layer_pruners(register):
    register(EmbeddingPruner(), [nn.Embedding], name="embedding")
