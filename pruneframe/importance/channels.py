"""Reading one member layer of a group: which entries of its weight and bias belong to each channel it loses."""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from ..graph import Member, Node, Space
from ..layer_pruner import DeclarativeLayerPruner


def _along(dim: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Rows of a tensor whose channels are one dimension: channel c is everything at index c of ``dim``."""

    def rows(tensor: torch.Tensor, idxs: torch.Tensor) -> torch.Tensor:
        return tensor.movedim(dim, 0)[idxs].reshape(len(idxs), -1)

    return rows


def _grouped_columns(groups: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Rows of a (grouped) convolution weight whose channels run along dim 1, ``groups`` times.

    A weight of shape ``(A, B, *k)`` split into ``groups`` blocks along dim 0
    holds ``groups * B`` channels: channel c is column ``c % B`` of block
    ``c // B`` (a conv's input channels; a transposed conv's output channels).
    """

    def rows(tensor: torch.Tensor, idxs: torch.Tensor) -> torch.Tensor:
        if groups == 1:
            return tensor.index_select(1, idxs).movedim(1, 0).reshape(len(idxs), -1)
        width = tensor.shape[1]
        blocks = tensor.reshape(groups, tensor.shape[0] // groups, width, -1)
        return blocks[idxs // width, :, idxs % width].reshape(len(idxs), -1)

    return rows


def _at_least_float32(t: torch.Tensor) -> torch.Tensor:
    """Half-precision weights are scored in float32: sums of many small powers underflow otherwise."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


class LayerChannels:
    """The channels one member layer of a group loses, and where they sit in its weight and bias.

    ``idxs`` are the layer's current channel indices (``kind`` "out" or "in").
    ``rows(tensor)`` gives, for each of them, the entries of ``tensor`` (the
    weight, or anything shaped like it: its ``.grad``, an accumulated curvature)
    that belong to that channel, as a ``(len(idxs), k)`` matrix; ``bias_entries``
    the same for the bias (``None`` when the channels have no bias).
    """

    def __init__(self, node: Node, space: Space, idxs: torch.Tensor, weight: torch.Tensor,
                 rows: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], bias: torch.Tensor | None):
        self.node = node
        self.layer = node.module
        self.name = f"{node.name} ({node.type})"
        self.kind = space.kind
        self.idxs = idxs
        self.n_channels = space.current_size
        self.weight = weight
        self.bias = bias
        self._rows = rows

    def all_idxs(self) -> torch.Tensor:
        """Every current channel of the layer along this kind, not only the group's."""
        return torch.arange(self.n_channels)

    def rows(self, tensor: torch.Tensor | None = None, idxs: torch.Tensor | None = None) -> torch.Tensor:
        """Each channel's entries of ``tensor`` (default: the weight), in at least float32."""
        tensor = self.weight if tensor is None else tensor
        idxs = self.idxs if idxs is None else idxs
        return _at_least_float32(self._rows(tensor.detach(), idxs.to(tensor.device)))

    def bias_entries(self, tensor: torch.Tensor | None = None, idxs: torch.Tensor | None = None) -> torch.Tensor | None:
        """Each channel's entry of ``tensor`` (default: the bias), or None when the channels have no bias."""
        if self.bias is None:
            return None
        tensor = self.bias if tensor is None else tensor
        idxs = self.idxs if idxs is None else idxs
        return _at_least_float32(tensor.detach()[idxs.to(tensor.device)])

    def rows_live(self, tensor: torch.Tensor) -> torch.Tensor:
        """Each channel's entries of ``tensor``, not detached (a penalty on them has a gradient) and in its own dtype."""
        return self._rows(tensor, self.idxs.to(tensor.device))

    def __repr__(self) -> str:
        return f"LayerChannels({self.name}, {self.kind}, {len(self.idxs)} of {self.n_channels})"


def _declared(pruner: DeclarativeLayerPruner, layer: nn.Module, kind: str) -> tuple[Any, int | None, Any, int | None]:
    """A declarative pruner's table: the weight (named "weight", else its first parameter) and bias, with their dims."""

    def dim_of(spec: Any) -> int | None:
        if pruner.coupled:  # one channel space: the table names it out or in
            return spec.out if spec.out is not None else spec.in_
        return spec.out if kind == "out" else spec.in_

    candidates = [s for s in pruner.tensors if dim_of(s) is not None and isinstance(getattr(layer, s.name, None), nn.Parameter)]
    weight = next((s for s in candidates if s.name == "weight"), None) or next((s for s in candidates if s.name != "bias"), None)
    bias = next((s for s in candidates if s.name == "bias"), None)
    return (getattr(layer, weight.name) if weight else None, dim_of(weight) if weight else None,
            getattr(layer, bias.name) if bias else None, dim_of(bias) if bias else None)


def read_channels(member: Member) -> LayerChannels | None:
    """How to read the channels a group ``member`` loses in its weight and bias, or None when pruneframe cannot tell."""
    node, space, idxs = member.node, member.space, member.idxs
    layer = node.module
    bias = None
    if node.kind == "parameter":
        weight, rows = layer, _along(node.pruning_dim)
        count = layer.shape[node.pruning_dim]
    elif isinstance(layer, nn.modules.conv._ConvNd):
        weight = layer.weight
        # a conv's output channels are weight rows; a transposed conv's are its input channels
        if space.kind == ("in" if layer.transposed else "out"):
            rows, count = _along(0), weight.shape[0]
        else:
            rows, count = _grouped_columns(layer.groups), weight.shape[1] * layer.groups
        bias = layer.bias if space.kind == "out" else None
    elif isinstance(node.pruner, DeclarativeLayerPruner):
        weight, dim, bias, bias_dim = _declared(node.pruner, layer, space.kind)
        if weight is None:
            return None  # e.g. a norm layer without affine parameters
        if bias is not None and (bias.dim() != 1 or bias_dim != 0):
            bias = None
        rows, count = _along(dim), weight.shape[dim]
    else:
        return None
    if count != space.current_size:
        if count == 1:
            return None  # one value shared by every channel (PReLU's single slope) says nothing about single ones
        raise ValueError(
            f"{node.name} ({node.type}) holds {count} channels along its weight but the graph counts "
            f"{space.current_size} {space.kind}put channels: the model was changed outside the graph. "
            "Call build_dependency again."
        )
    return LayerChannels(node, space, idxs, weight, rows, bias)
