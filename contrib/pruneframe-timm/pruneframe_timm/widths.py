"""Fix-ups for the widths timm models and classifier heads store: ``embed_dim``, ``num_features``, ``head_hidden_size``.

timm's conventions: ``num_features`` is the width ``forward_features`` returns,
``head_hidden_size`` the width ``forward_head(..., pre_logits=True)`` returns
(what the classifier reads). ViT's forward reads neither, but timm's API does:
``reset_classifier`` builds the new classifier from them, so a stale value
gives a classifier that no longer fits the pruned features.

Every value is read off the layers that produce or consume that width, never
computed from the old value; a model whose classifier is ``nn.Identity`` needs
nothing, because then the features reach the model's output and pruneframe
never prunes them. Each fix-up only assigns attributes (a fresh list where a
list changes), so a prune that is undone restores them too.
"""
from __future__ import annotations

import torch
from timm.layers import classifier as _classifier
from torch import nn

ClassifierHead = _classifier.ClassifierHead
#: timm's pool -> norm -> (MLP) heads; the channels-last one is missing in older releases
NORM_MLP_HEADS = tuple(
    cls for cls in (getattr(_classifier, name, None) for name in ("NormMlpClassifierHead", "ClNormMlpClassifierHead"))
    if cls is not None
)


def _in_width(layer: nn.Module | None) -> int | None:
    """The input width of a classifier layer: an ``nn.Linear`` or a 1x1 convolution (timm's ``use_conv`` heads)."""
    if isinstance(layer, nn.Linear):
        return layer.in_features
    if isinstance(layer, nn.Conv2d):
        return layer.in_channels
    return None


def _out_width(layer: nn.Module | None) -> int | None:
    if isinstance(layer, nn.Linear):
        return layer.out_features
    if isinstance(layer, nn.Conv2d):
        return layer.out_channels
    return None


def _norm_width(norm: nn.Module | None) -> int | None:
    if isinstance(norm, nn.LayerNorm):
        return norm.normalized_shape[0]
    if isinstance(norm, nn.modules.batchnorm._NormBase):
        return norm.num_features
    return None


def _feat_mult(pool: nn.Module) -> int:
    """How many times pooling multiplies the width (2 for timm's concatenated avg+max pooling)."""
    return pool.feat_mult() if hasattr(pool, "feat_mult") else 1


def _head_widths(head: nn.Module) -> tuple[int, int] | None:
    """(width the head reads, width its pre-logits return) of a timm classifier head, from its layers."""
    if isinstance(head, NORM_MLP_HEADS):
        width = _norm_width(head.norm)
        if width is None:
            return None
        hidden = _out_width(getattr(head.pre_logits, "fc", None))
        return width, hidden if hidden is not None else width
    if isinstance(head, ClassifierHead):
        pooled = _in_width(head.fc)
        if pooled is None:
            return None
        return pooled // _feat_mult(head.global_pool), pooled
    return None


def classifier_head(head: nn.Module) -> None:
    """``in_features``, ``num_features`` (and ``hidden_size``) of timm's ``ClassifierHead`` / ``NormMlpClassifierHead``."""
    widths = _head_widths(head)
    if widths is None:
        return
    head.in_features, head.num_features = widths
    if getattr(head, "hidden_size", None):
        head.hidden_size = widths[1]


def model_with_head_module(model: nn.Module) -> None:
    """ConvNeXt, Swin: ``num_features`` and ``head_hidden_size`` are what their ``head`` module reads and returns."""
    widths = _head_widths(model.head)
    if widths is not None:
        model.num_features, model.head_hidden_size = widths
    proj = getattr(getattr(model, "patch_embed", None), "proj", None)
    if isinstance(getattr(model, "embed_dim", None), int) and isinstance(proj, nn.Conv2d):
        model.embed_dim = proj.out_channels  # Swin: the width of the first stage


def pooled_classifier(model: nn.Module) -> None:
    """ResNet, EfficientNet: features -> ``global_pool`` -> classifier."""
    pooled = _in_width(model.get_classifier())
    if pooled is None:
        return
    model.head_hidden_size = pooled
    model.num_features = pooled // _feat_mult(model.global_pool)


def mobilenetv3(model: nn.Module) -> None:
    """MobileNetV3: features -> ``global_pool`` -> ``conv_head`` -> classifier (``conv_head`` may be absent)."""
    if isinstance(model.conv_head, nn.Conv2d):
        model.num_features = model.conv_head.in_channels // _feat_mult(model.global_pool)
        model.head_hidden_size = model.conv_head.out_channels
    else:
        pooled_classifier(model)


def vision_transformer(model: nn.Module) -> None:
    """ViT: ``embed_dim`` / ``num_features`` are the width of the token stream, ``head_hidden_size`` what ``head`` reads."""
    widths = {t.shape[-1] for t in (model.pos_embed, model.cls_token, model.reg_token) if isinstance(t, torch.Tensor)}
    proj = getattr(model.patch_embed, "proj", None)
    if isinstance(proj, (nn.Conv2d, nn.Linear)):
        widths.add(_out_width(proj))
    if len(widths) != 1:
        return  # no carrier of the width, or carriers that disagree: nothing certain to store
    width = widths.pop()
    model.embed_dim = model.num_features = width
    head = _in_width(model.head)
    if head is not None:
        model.head_hidden_size = head
    elif getattr(model, "attn_pool", None) is None:
        model.head_hidden_size = width
    if isinstance(getattr(model, "feature_info", None), list):
        model.feature_info = [
            {**info, "num_chs": width} if str(info.get("module", "")).startswith("blocks.") else info
            for info in model.feature_info
        ]


def scale_shape(module: nn.Module) -> None:
    """MetaFormer's ``Scale`` (PoolFormer's layer and residual scales) multiplies by ``scale.view(shape)``: ``shape[0]``
    is its width."""
    shape = getattr(module, "shape", None)
    if isinstance(shape, tuple) and shape and isinstance(module.scale, torch.Tensor):
        module.shape = (module.scale.numel(), *shape[1:])
