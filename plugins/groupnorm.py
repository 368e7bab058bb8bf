"""Layer pruner for ``nn.GroupNorm``: every group keeps the same width, so position j goes from every group.

Normalisation runs across the channels of a group, so a pruned model is not
exactly the masked original.
"""
from __future__ import annotations

import torch
from torch import nn

from pruneframe import Coupling, DeclarativeLayerPruner, TensorDims, hookimpl


class GroupNormPruner(DeclarativeLayerPruner):
    tensors = (TensorDims("weight", out=0), TensorDims("bias", out=0))
    out_attrs = ("num_channels",)
    coupled = True

    def couplings(self, layer, n_out, n_in):
        found = super().couplings(layer, n_out, n_in)
        g = layer.num_groups
        if g > 1 and n_out % g == 0:
            grid = torch.arange(n_out).view(g, n_out // g)
            found.append(Coupling("out", grid[1:].flatten(), "out", grid[0].repeat(g - 1)))
        return found

    def check_prune(self, layer, kind, idxs):
        n, g = layer.num_channels, layer.num_groups
        left = n - len(set(int(i) for i in idxs))
        return None if left % g == 0 else f"GroupNorm(num_groups={g}) would keep {left} channels, not a multiple of {g}"

    def _prune(self, layer, idxs, kind):
        n, g = layer.num_channels, layer.num_groups
        removed = len(set(int(i) for i in idxs))
        if (n - removed) % g:
            raise ValueError(
                f"GroupNorm(num_groups={g}) needs a multiple of {g} channels; removing {removed} of {n} leaves {n - removed}. "
                f"Remove position j of every group (j, j+{n // g}, ...)"
            )
        return super()._prune(layer, idxs, kind)


@hookimpl(trylast=True)
def pruneframe_layer_pruners(register):
    register(GroupNormPruner(), [nn.GroupNorm], name="groupnorm")
