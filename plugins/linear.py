"""Layer pruner for ``nn.Linear``: output features are weight rows, input features weight columns."""
from __future__ import annotations

from torch import nn

from pruneframe import DeclarativeLayerPruner, TensorDims, hookimpl


class LinearPruner(DeclarativeLayerPruner):
    tensors = (TensorDims("weight", out=0, in_=1), TensorDims("bias", out=0))
    out_attrs = ("out_features",)
    in_attrs = ("in_features",)
    output_dim = -1
    input_dim = -1


@hookimpl(trylast=True)
def pruneframe_layer_pruners(register):
    register(LinearPruner(), [nn.Linear], name="linear")
