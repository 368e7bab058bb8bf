"""The pruneframe plugin for timm models, found through the ``pruneframe.plugins`` entry point ``timm``.

- fix-ups (``pruneframe_fixups``) keep the sizes timm modules store in step
  with their pruned weights, after every prune and on plan replay:
  ``Attention.head_dim`` / ``attn_dim`` / ``fused_attn``, Swin's
  ``WindowAttention.fused_attn``, and the models' and heads' ``embed_dim`` /
  ``num_features`` / ``head_hidden_size`` / ``in_features``;
- hints (``pruneframe_module_hints``) keep the channels whose width timm's
  code ties to another width no fix-up can change;
- layer pruners (``pruneframe_layer_pruners``) say where timm's
  channels-first layer norms keep their channels, and prune the ``gain`` of
  timm's weight-standardised convolutions.
"""
from __future__ import annotations

from timm.layers import AttentionPoolLatent
from timm.layers import norm as _norm
from timm.layers import norm_act as _norm_act
from timm.layers.selective_kernel import SelectiveKernel
from timm.layers.std_conv import ScaledStdConv2d
from timm.models import cait, coat, convit, davit, nest, nextvit, tnt, twins, xcit
from timm.models.convnext import ConvNeXt
from timm.models.efficientnet import EfficientNet
from timm.models.metaformer import Scale
from timm.models.mobilenetv3 import MobileNetV3
from timm.models.res2net import Bottle2neck
from timm.models.resnet import ResNet
from timm.models.swin_transformer import SwinTransformer, WindowAttention

# Attention moved to timm.layers in later releases; vision_transformer imports it under this name in all of them
from timm.models.vision_transformer import Attention, VisionTransformer

import pruneframe
from pruneframe.hookspecs import RegisterFixup, RegisterLayerPruner, RegisterModuleHint

from . import attention, splits, widths
from .convs import ScaledStdConvPruner
from .norms import ChannelsFirstLayerNormPruner

# timm's nn.LayerNorm subclasses that normalise dimension 1 of NCHW tensors (the Fp32 ones are missing in older releases)
_CHANNELS_FIRST_NORMS = [
    cls
    for module, names in ((_norm, ("LayerNorm2d", "LayerNorm2dFp32", "LayerNormExp2d")),
                          (_norm_act, ("LayerNormAct2d", "LayerNormAct2dFp32")))
    for cls in (getattr(module, name, None) for name in names)
    if cls is not None
]


@pruneframe.hookimpl
def pruneframe_layer_pruners(register: RegisterLayerPruner) -> None:
    """Channels-first layer norms and ``ScaledStdConv2d``; also provides ``pruneframe.prune_timm_layernorm2d_{out,in}_channels``
    and ``pruneframe.prune_timm_scaled_std_conv_{out,in}_channels``."""
    register(ChannelsFirstLayerNormPruner(), _CHANNELS_FIRST_NORMS, name="timm_layernorm2d")
    # ScaledStdConv2dSame subclasses ScaledStdConv2d
    register(ScaledStdConvPruner(), [ScaledStdConv2d], name="timm_scaled_std_conv")


@pruneframe.hookimpl
def pruneframe_fixups(register: RegisterFixup) -> None:
    """Stored sizes that follow the weights: attention head widths, and the widths models and heads report."""
    # one fix-up for every attention module that stores its head width (head_dim, and attn_dim or hidden_dim)
    register([Attention, tnt.Attention], attention.attention_sizes, name="timm-attention-sizes")
    register([WindowAttention], attention.window_attention_scale, name="timm-window-attention-scale")
    register([VisionTransformer], widths.vision_transformer, name="timm-vit-widths")
    register([ResNet, EfficientNet], widths.pooled_classifier, name="timm-pooled-classifier-widths")
    register([MobileNetV3], widths.mobilenetv3, name="timm-mobilenetv3-widths")
    register([ConvNeXt, SwinTransformer], widths.model_with_head_module, name="timm-head-module-widths")
    register([widths.ClassifierHead, *widths.NORM_MLP_HEADS], widths.classifier_head,
             name="timm-classifier-head-widths")
    register([Scale], widths.scale_shape, name="timm-metaformer-scale-shape")


@pruneframe.hookimpl
def pruneframe_module_hints(register: RegisterModuleHint) -> None:
    """Channels to keep where timm's code ties a head width to its input's width."""
    register([AttentionPoolLatent], attention.attention_pool_latent, name="timm-attention-pool-latent")
    register([Attention], attention.attention_merging_to_input_width, name="timm-attention-merged-to-input-width")
    register([nest.Attention, xcit.XCA, cait.ClassAttn, cait.TalkingHeadAttn, nextvit.EfficientAttention,
              convit.GPSA, convit.MHSA, coat.FactorAttnConvRelPosEnc, twins.LocallyGroupedAttn, twins.GlobalSubSampleAttn,
              davit.ChannelAttention, davit.WindowAttention],
             attention.heads_tied_to_input_width, name="timm-attention-heads-tied-to-input-width")
    register([Bottle2neck], splits.res2net_split, name="timm-res2net-split")
    register([SelectiveKernel], splits.selective_kernel, name="timm-selective-kernel-split")
