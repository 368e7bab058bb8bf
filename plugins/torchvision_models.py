"""Hints and fix-ups for torchvision models whose code stores sizes that pruning changes.

- ``VisionTransformer`` reshapes its patch embedding with a stored
  ``hidden_dim``: after a prune it is set from ``conv_proj``.
- MaxViT's ``RelativePositionalMultiHeadAttention`` reshapes with stored head
  counts and widths and merges heads back to a width read from its *input*
  (``reshape(B, G, P, D)``), so neither its inner width nor the width around it
  may change: ``to_qkv`` and ``merge`` keep their inputs and outputs.

torchvision is optional: without it this plugin registers nothing.
"""
from __future__ import annotations

from pruneframe import hookimpl

try:
    from torchvision.models import maxvit as _maxvit
    from torchvision.models import vision_transformer as _vit
except ImportError:  # torchvision is not a dependency of pruneframe; nothing to hint then
    _maxvit = _vit = None


def _vit_hidden_dim(model) -> None:
    model.hidden_dim = model.conv_proj.out_channels


def _maxvit_attention(module, hints) -> None:
    reason = f"{type(module).__name__} reshapes with a stored head width and merges heads to its input width"
    for layer in (module.to_qkv, module.merge):
        hints.keep_out_channels(layer, reason)
        hints.keep_in_channels(layer, reason)


@hookimpl(trylast=True)
def pruneframe_fixups(register):
    if _vit is not None:
        register([_vit.VisionTransformer], _vit_hidden_dim, name="vit-hidden-dim")


@hookimpl(trylast=True)
def pruneframe_module_hints(register):
    if _maxvit is not None:
        register([_maxvit.RelativePositionalMultiHeadAttention], _maxvit_attention, name="maxvit-attention")
