"""Hints for timm blocks that split a tensor into pieces of a stored width, which no fix-up can keep equal.

- Res2Net's ``Bottle2neck`` splits ``conv1``'s output into ``scale`` pieces
  of ``width`` channels (``torch.split(out, self.width, 1)``); each piece
  feeds its own 3x3 convolution. A prune removes channels from some pieces
  and not others, so no single ``width`` fits any more;
- the ``SelectiveKernel`` convolution (SK-ResNet) splits its input into
  ``num_paths`` pieces of ``in_channels // num_paths`` when ``split_input``;
  and it stacks its paths and sums them over the stacked dimension, which
  pruneframe's reduction handler treats as a sum over channels, so its
  consumers are not coupled to the paths' output channels.

Both keep those channels whole; what these blocks do not split still prunes.
"""
from __future__ import annotations

from torch import nn


def res2net_split(block: nn.Module, hints) -> None:
    """Keep the output channels of ``Bottle2neck.conv1``, which the block splits into pieces of ``width``."""
    if getattr(block, "scale", 1) > 1 and isinstance(block.conv1, nn.Conv2d):
        hints.keep_out_channels(block.conv1, f"{type(block).__name__} splits them into {block.scale} pieces of its stored "
                                "width (torch.split(out, self.width, 1)), and a prune would leave the pieces unequal")


def selective_kernel(module: nn.Module, hints) -> None:
    """Keep what ``SelectiveKernel`` splits by a stored size (its input) and sums over its stacked paths (their outputs)."""
    for path in module.paths:
        conv = getattr(path, "conv", None)
        if not isinstance(conv, nn.Conv2d):
            continue
        hints.keep_out_channels(conv, "SelectiveKernel stacks its paths and sums them over the stacked dimension, which "
                                "pruneframe does not follow to the layers that read the sum")
        if module.split_input:
            hints.keep_in_channels(conv, f"SelectiveKernel splits its input into {module.num_paths} pieces of its stored "
                                   "in_channels // num_paths, and a prune would leave the pieces unequal")
