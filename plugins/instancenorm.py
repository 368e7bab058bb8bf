"""Layer pruner for instance norm (1d/2d/3d): per-channel statistics, optional per-channel affine and running stats."""
from __future__ import annotations

from torch import nn

from pruneframe import DeclarativeLayerPruner, TensorDims, hookimpl


class InstanceNormPruner(DeclarativeLayerPruner):
    tensors = (
        TensorDims("weight", out=0),
        TensorDims("bias", out=0),
        TensorDims("running_mean", out=0),
        TensorDims("running_var", out=0),
    )
    out_attrs = ("num_features",)
    coupled = True


@hookimpl(trylast=True)
def pruneframe_layer_pruners(register):
    register(InstanceNormPruner(), [nn.modules.instancenorm._InstanceNorm], name="instancenorm")
