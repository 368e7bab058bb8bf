"""A layer pruner for timm's channels-first layer norms (``LayerNorm2d`` and relatives).

These subclass ``nn.LayerNorm`` but normalise dimension 1 of an ``(N, C, H, W)``
tensor (they permute around ``F.layer_norm``). pruneframe's built-in
``nn.LayerNorm`` pruner has to guess where such a subclass keeps its channels
and takes the last dimension whenever its size equals ``C``: ConvNeXt's stem
at 160x160 input gives ``(N, 40, 40, 40)``, and the whole stem then looks like
one indivisible block. Declaring dimension 1 removes the guess.
"""
from __future__ import annotations

from pruneframe import DeclarativeLayerPruner, TensorDims


class ChannelsFirstLayerNormPruner(DeclarativeLayerPruner):
    """Prunes a layer norm over dimension 1 of its input: ``weight``, ``bias`` and ``normalized_shape``."""

    tensors = (TensorDims("weight", out=0), TensorDims("bias", out=0))
    out_attrs = ("normalized_shape",)
    coupled = True
    output_dim = input_dim = 1
