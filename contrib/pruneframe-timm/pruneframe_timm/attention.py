"""Fix-ups and hints for timm attention modules, which reshape with the sizes they store.

timm's ``Attention`` (ViT, DeiT and most plain vision transformers) computes
``qkv(x).reshape(B, N, 3, num_heads, head_dim)`` and merges the heads with
``reshape(B, N, attn_dim)``. pruneframe's trace lets only the innermost size of
such a reshape change, so position ``d`` of every head of q, k and v is one
block: a prune of ``qkv`` shrinks ``head_dim`` in every head at once and never
changes ``num_heads``. ``num_heads`` is therefore the one stored size taken as
it is; the rest follows from the weights (``attention_sizes``).

Scale: ``scale`` keeps its original value, ``original_head_dim ** -0.5``. The
pruned model then computes exactly what the original computes with the pruned
q/k/v features zeroed: a zeroed feature adds nothing to ``q . k``, and the
trained weights were fitted to that scale. timm's fused path
(``F.scaled_dot_product_attention`` without ``scale=``) would use the new
``head_dim ** -0.5`` instead, so once ``head_dim`` no longer matches ``scale``
the fix-up sets ``fused_attn = False`` and the module takes its explicit
``q * self.scale`` path. To trade exactness for the fused kernel after
fine-tuning, set ``scale = head_dim ** -0.5`` and ``fused_attn = True`` on the
pruned modules yourself.
"""
from __future__ import annotations

import math

from torch import nn


def _head_dim(qkv: nn.Linear, heads: int) -> int | None:
    """``qkv.out_features / (3 * heads)``, or None if the width holds no whole number of q, k, v heads."""
    if not isinstance(qkv, nn.Linear) or heads < 1 or qkv.out_features % (3 * heads):
        return None
    return qkv.out_features // (3 * heads)


def _keep_scale(module: nn.Module, head_dim: int) -> None:
    """Turn off the fused path when it would scale by ``head_dim ** -0.5`` rather than the stored ``scale``."""
    if getattr(module, "fused_attn", False) and not math.isclose(module.scale, head_dim ** -0.5, rel_tol=1e-9):
        module.fused_attn = False


def attention_sizes(module: nn.Module) -> None:
    """Set ``head_dim``, ``attn_dim`` (and ``fused_attn``) of a ``timm.layers.Attention`` from its ``qkv`` weight.

    Sizes that no whole head width explains are left as they are; the model
    then fails pruneframe's check run and the prune is undone.
    """
    head_dim = _head_dim(module.qkv, module.num_heads)
    if head_dim is None:
        return
    attn_dim = module.num_heads * head_dim
    if isinstance(module.proj, nn.Linear) and module.proj.in_features != attn_dim:
        return  # q, k, v and the merged heads disagree: nothing consistent to store
    module.head_dim = head_dim
    if hasattr(module, "attn_dim"):
        module.attn_dim = attn_dim
    _keep_scale(module, head_dim)


def window_attention_scale(module: nn.Module) -> None:
    """Swin's ``WindowAttention`` reads its head width from the tensor; only its scale needs keeping."""
    head_dim = _head_dim(module.qkv, module.num_heads)
    if head_dim is not None:
        _keep_scale(module, head_dim)


def attention_merging_to_input_width(module: nn.Module, hints) -> None:
    """Keep the widths of an ``Attention`` that merges its heads to its input's width (timm releases without ``attn_dim``).

    Such a module ends with ``reshape(B, N, C)``, ``C`` read from its input:
    its head width and the width of the token stream must stay equal, and as
    they are pruned in different groups, both stay.
    """
    if hasattr(module, "attn_dim"):
        return  # the merged width is stored, and attention_sizes keeps it right
    reason = (f"{type(module).__name__} merges its heads back to the width of its input (reshape(B, N, C)), so neither "
              "its head width nor the width of the token stream may change")
    hints.keep_out_channels(module.qkv, reason)
    hints.keep_in_channels(module.qkv, reason)


def attention_pool_latent(module: nn.Module, hints) -> None:
    """Keep the widths ``AttentionPoolLatent`` ties together in code: its heads and the features it pools."""
    reason = ("AttentionPoolLatent merges its heads back to the width of its input (reshape(B, latent_len, C)), so "
              "neither its head width nor the width of the features it pools may change")
    hints.keep_out_channels(module.kv, reason)
    hints.keep_in_channels(module.kv, reason)
    if isinstance(module.q, nn.Linear):
        hints.keep_out_channels(module.q, reason)
