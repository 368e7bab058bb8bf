"""Layer pruner for ``nn.PReLU``: one slope per channel (or one shared slope, which stays)."""
from __future__ import annotations

from torch import nn

from pruneframe import DeclarativeLayerPruner, TensorDims, hookimpl


class PReLUPruner(DeclarativeLayerPruner):
    tensors = (TensorDims("weight", out=0),)
    out_attrs = ("num_parameters",)
    coupled = True

    def get_out_channels(self, layer):
        return None if layer.num_parameters == 1 else layer.num_parameters

    def _prune(self, layer, idxs, kind):
        if layer.num_parameters == 1:
            return layer  # a shared slope serves any number of channels
        return super()._prune(layer, idxs, kind)


@hookimpl(trylast=True)
def pruneframe_layer_pruners(register):
    register(PReLUPruner(), [nn.PReLU], name="prelu")
