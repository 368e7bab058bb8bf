"""Layer pruner for convolutions: Conv1d/2d/3d and ConvTranspose1d/2d/3d, plain, grouped and depthwise.

- plain (groups == 1): output channels are weight rows (columns of a
  transposed conv), input channels the other way round;
- depthwise (every group has one input channel): a group's input and its
  outputs go together, so whole groups are removed and ``groups`` shrinks; or,
  with a depth multiplier, the same output position goes from every group;
- grouped: every group must keep the same width, so a position is removed
  from every group at once (the graph couples them).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from pruneframe import BasePruningFunc, ChannelDim, Coupling, hookimpl
from pruneframe.layer_pruner import keep_index, select_, validate_idxs, zero_

_ConvTransposeNd = nn.modules.conv._ConvTransposeNd


def _transposed(layer: nn.Module) -> bool:
    return isinstance(layer, _ConvTransposeNd)


def _depthwise(layer: nn.Module) -> bool:
    return layer.groups > 1 and layer.in_channels == layer.groups and not _transposed(layer)


def _local_positions(layer: nn.Module, index: torch.Tensor, n: int, what: str) -> torch.Tensor:
    """The positions removed in each group, which must be the same in every group."""
    g = layer.groups
    per = n // g
    local = [set((index[index // per == k] % per).tolist()) for k in range(g)]
    if any(s != local[0] for s in local):
        raise ValueError(
            f"{type(layer).__name__} has groups={g}: every group must lose the same {what} positions, "
            f"got {sorted(index.tolist())}. Prune position j of every group (j, j+{per}, j+{2 * per}, ...)"
        )
    return torch.tensor(sorted(local[0]), dtype=torch.long)


def _everywhere(local_keep: torch.Tensor, per: int, g: int) -> torch.Tensor:
    return (local_keep.view(1, -1) + per * torch.arange(g).view(-1, 1)).flatten()


class ConvPruner(BasePruningFunc):
    def get_out_channels(self, layer: nn.Module) -> int:
        return layer.out_channels

    def get_in_channels(self, layer: nn.Module) -> int:
        return layer.in_channels

    def _prune_depthwise_outputs(self, layer: nn.Module, index: torch.Tensor) -> nn.Module:
        """Whole groups (input channels with their outputs), or the same output position of every group."""
        per = layer.out_channels // layer.groups
        if torch.unique(index // per).numel() * per == index.numel():
            return self._prune_whole_groups(layer, index)
        keep = _everywhere(keep_index(per, _local_positions(layer, index, layer.out_channels, "output")), per, layer.groups)
        select_(layer, "weight", 0, keep)
        select_(layer, "bias", 0, keep)
        layer.out_channels -= index.numel()
        return layer

    def _prune_whole_groups(self, layer: nn.Module, out_index: torch.Tensor) -> nn.Module:
        per = layer.out_channels // layer.groups
        groups = torch.unique(out_index // per)
        if groups.numel() * per != out_index.numel():
            raise ValueError(
                f"depthwise {type(layer).__name__} has {per} outputs per input channel; remove all of a group's "
                f"outputs at once, got {out_index.tolist()}"
            )
        keep = keep_index(layer.out_channels, out_index)
        select_(layer, "weight", 0, keep)
        select_(layer, "bias", 0, keep)
        layer.out_channels -= out_index.numel()
        layer.in_channels -= groups.numel()
        layer.groups -= groups.numel()
        return layer

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        n = layer.out_channels
        index = validate_idxs(layer, idxs, n, "output channel")
        if _depthwise(layer):
            return self._prune_depthwise_outputs(layer, index)
        g = layer.groups
        if g == 1:
            keep = keep_index(n, index)
            select_(layer, "weight", 1 if _transposed(layer) else 0, keep)
        else:
            per = n // g
            keep_local = keep_index(per, _local_positions(layer, index, n, "output"))
            keep = _everywhere(keep_local, per, g)
            if _transposed(layer):
                select_(layer, "weight", 1, keep_local)
            else:
                select_(layer, "weight", 0, keep)
        select_(layer, "bias", 0, keep)
        layer.out_channels = n - index.numel()
        return layer

    def prune_in_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        n = layer.in_channels
        index = validate_idxs(layer, idxs, n, "input channel")
        if _depthwise(layer):
            per = layer.out_channels // layer.groups
            out_index = (index.view(-1, 1) * per + torch.arange(per).view(1, -1)).flatten()
            return self._prune_whole_groups(layer, out_index)
        g = layer.groups
        if g == 1:
            select_(layer, "weight", 0 if _transposed(layer) else 1, keep_index(n, index))
        else:
            per = n // g
            keep_local = keep_index(per, _local_positions(layer, index, n, "input"))
            if _transposed(layer):
                select_(layer, "weight", 0, _everywhere(keep_local, per, g))
            else:
                select_(layer, "weight", 1, keep_local)
        layer.in_channels = n - index.numel()
        return layer

    def check_prune(self, layer: nn.Module, kind: str, idxs: Sequence[int]) -> str | None:
        index = torch.as_tensor(list(idxs), dtype=torch.long)
        try:
            if _depthwise(layer):
                per = layer.out_channels // layer.groups
                if kind == "out" and torch.unique(index // per).numel() * per != index.numel():
                    _local_positions(layer, index, layer.out_channels, "output")  # or one position of every group
            elif layer.groups > 1:
                n = layer.out_channels if kind == "out" else layer.in_channels
                _local_positions(layer, index, n, "output" if kind == "out" else "input")
        except ValueError as exc:
            return str(exc)
        return None

    # --- tracing ------------------------------------------------------------------
    def _channel_dim(self, layer: nn.Module, t: torch.Tensor) -> int:
        return t.dim() - (layer.weight.dim() - 2) - 1  # batched: 1, unbatched: 0

    def output_channel_dims(self, layer, outputs):
        return [ChannelDim(self._channel_dim(layer, outputs[0]))] + [None] * (len(outputs) - 1)

    def input_channel_dims(self, layer, inputs):
        return [ChannelDim(self._channel_dim(layer, inputs[0]))] + [None] * (len(inputs) - 1)

    def in_out_coupled(self, layer: nn.Module) -> bool:
        return _depthwise(layer)

    def couplings(self, layer: nn.Module, n_out: int, n_in: int) -> list[Coupling]:
        g = layer.groups
        if g == 1:
            return []
        if _depthwise(layer):
            per = n_out // n_in
            return [Coupling("in", torch.arange(n_in).repeat_interleave(per), "out", torch.arange(n_out))]
        found = []
        for space, n in (("in", n_in), ("out", n_out)):
            per = n // g
            grid = torch.arange(n).view(g, per)
            found.append(Coupling(space, grid[1:].flatten(), space, grid[0].repeat(g - 1)))
        return found

    # --- equivalence checking ----------------------------------------------------------
    def mask_in_channels(self, layer: nn.Module, idxs: Sequence[int]) -> None:
        if _depthwise(layer):
            return  # its outputs go too; their consumers are masked
        index = torch.as_tensor(list(idxs), dtype=torch.long)
        if layer.groups == 1 or _transposed(layer):
            zero_(layer, "weight", 0 if _transposed(layer) else 1, index)
            return
        per_in, per_out = layer.in_channels // layer.groups, layer.out_channels // layer.groups
        with torch.no_grad():
            for i in index.tolist():
                k = i // per_in
                layer.weight[k * per_out:(k + 1) * per_out, i % per_in] = 0


    def mask_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> None:
        index = torch.as_tensor(list(idxs), dtype=torch.long)
        if _transposed(layer):
            per = layer.out_channels // layer.groups
            with torch.no_grad():
                for o in index.tolist():
                    layer.weight[(o // per) * (layer.in_channels // layer.groups):((o // per) + 1) * (layer.in_channels // layer.groups), o % per] = 0
        else:
            zero_(layer, "weight", 0, index)
        zero_(layer, "bias", 0, index)


@hookimpl(trylast=True)
def pruneframe_layer_pruners(register):
    types = [nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d]
    register(ConvPruner(), types, name="conv")
    register(ConvPruner(), [], name="depthwise_conv")
