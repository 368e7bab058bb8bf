"""Fix-ups and hints for timm attention modules, which reshape with the sizes they store.

timm's ``Attention`` (ViT, DeiT and most plain vision transformers) computes
``qkv(x).reshape(B, N, 3, num_heads, head_dim)`` and merges the heads with
``reshape(B, N, attn_dim)``. pruneframe's trace lets only the innermost size of
such a reshape change, so position ``d`` of every head of q, k and v is one
block: a prune of ``qkv`` shrinks ``head_dim`` in every head at once and never
changes ``num_heads``. ``num_heads`` is therefore the one stored size taken as
it is; the rest follows from the weights (``attention_sizes``, which serves
TNT's ``qk`` / ``v`` attention too). Attention whose code reads its head
width from its input's width cannot be kept consistent by any fix-up; a hint
keeps it whole (``heads_tied_to_input_width``).

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

# where timm's attention modules keep their query, key and value projections: (attribute, how many of q/k/v it holds)
_PROJECTIONS = (("qkv", 3), ("qk", 2), ("q", 1), ("k", 1), ("kv", 2), ("v", 1))


def projections(module: nn.Module) -> list[nn.Linear]:
    """The q/k/v projection layers of a timm attention module (``qkv``; ``qk`` and ``v``; ``q``, ``k`` and ``v``, ...)."""
    return [layer for name, _ in _PROJECTIONS if isinstance(layer := getattr(module, name, None), nn.Linear)]


def _query_head_dim(module: nn.Module, heads: int) -> int | None:
    """The width of one query head, read off the first projection that holds the queries, or None if it holds no
    whole number of heads."""
    for name, parts in _PROJECTIONS[:3]:  # qkv, qk or q: the queries' projection
        layer = getattr(module, name, None)
        if isinstance(layer, nn.Linear):
            return _head_dim(layer, heads, parts)
    return None


def _head_dim(layer: nn.Linear, heads: int, parts: int = 3) -> int | None:
    """``layer.out_features / (parts * heads)``, or None if the width holds no whole number of heads."""
    if not isinstance(layer, nn.Linear) or heads < 1 or layer.out_features % (parts * heads):
        return None
    return layer.out_features // (parts * heads)


def _keep_scale(module: nn.Module, head_dim: int) -> None:
    """Turn off the fused path when it would scale by ``head_dim ** -0.5`` rather than the stored ``scale``."""
    if getattr(module, "fused_attn", False) and not math.isclose(module.scale, head_dim ** -0.5, rel_tol=1e-9):
        module.fused_attn = False


def attention_sizes(module: nn.Module) -> None:
    """Set the head sizes an attention module stores (``head_dim``, ``attn_dim`` / ``hidden_dim``, ``fused_attn``)
    from its query projection (``qkv``, ``qk`` or ``q``) and ``num_heads``.

    One function for timm's ``Attention`` (ViT: ``qkv``, ``attn_dim``) and
    TNT's ``Attention`` (``qk`` and a separate ``v``, ``hidden_dim``). Sizes
    that no whole head width explains are left as they are; the model then
    fails pruneframe's check run and the prune is undone.
    """
    heads = module.num_heads
    head_dim = _query_head_dim(module, heads)
    if head_dim is None:
        return
    width = heads * head_dim
    if hasattr(module, "attn_dim") and isinstance(module.proj, nn.Linear) and module.proj.in_features != width:
        return  # q, k, v and the merged heads disagree: nothing consistent to store
    module.head_dim = head_dim
    for stored in ("attn_dim", "hidden_dim"):  # the width of all heads together, where the module keeps it
        if hasattr(module, stored):
            setattr(module, stored, width)
    _keep_scale(module, head_dim)


def window_attention_scale(module: nn.Module) -> None:
    """Swin's ``WindowAttention`` reads its head width from the tensor; only its scale needs keeping."""
    head_dim = _head_dim(module.qkv, module.num_heads)
    if head_dim is not None:
        _keep_scale(module, head_dim)


def attention_merging_to_input_width(module: nn.Module, hints) -> None:
    """Keep the widths of an ``Attention`` that merges its heads to its input's width (timm releases without ``attn_dim``)."""
    if not hasattr(module, "attn_dim"):  # the merged width is stored, and attention_sizes keeps it right
        heads_tied_to_input_width(module, hints)


def heads_tied_to_input_width(module: nn.Module, hints) -> None:
    """Keep the q/k/v widths and the input width of an attention module whose code ties its heads to its input's width.

    NesT's and older timm releases' ``Attention``, XCiT's ``XCA``, CaiT/XCiT's
    ``ClassAttn``, CaiT's ``TalkingHeadAttn``, Next-ViT's ``EfficientAttention``,
    ConViT's ``GPSA`` / ``MHSA``, CoaT's factorised attention, Twins' and
    DaViT's attention read ``C`` from their input, reshape with
    ``C // num_heads`` (or a stored ``head_dim``) and merge with
    ``reshape(B, N, C)``: the width of their heads must stay the width of the
    token stream. The two are pruned in different groups, so no
    fix-up can keep them equal; both stay (the MLPs around them still prune).
    """
    reason = (f"{type(module).__name__} reads its head width from the width of its input (reshape with C // num_heads, "
              "merged back with reshape(B, N, C)), so neither its q/k/v widths nor the width of the token stream may change")
    for layer in projections(module):
        hints.keep_out_channels(layer, reason)
        hints.keep_in_channels(layer, reason)


def attention_pool_latent(module: nn.Module, hints) -> None:
    """Keep the widths ``AttentionPoolLatent`` ties together in code: its heads and the features it pools."""
    reason = ("AttentionPoolLatent merges its heads back to the width of its input (reshape(B, latent_len, C)), so "
              "neither its head width nor the width of the features it pools may change")
    hints.keep_out_channels(module.kv, reason)
    hints.keep_in_channels(module.kv, reason)
    if isinstance(module.q, nn.Linear):
        hints.keep_out_channels(module.q, reason)
