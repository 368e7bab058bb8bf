"""Layer pruner for ``nn.LSTM``, ``nn.GRU`` and ``nn.RNN``: hidden units out, input features in.

PyTorch stores, for layer ``k`` and direction suffix ``s`` ("" forward,
"_reverse" backward):

- ``weight_ih_l{k}{s}``: (G*H, in_k), ``weight_hh_l{k}{s}``: (G*H, H),
  ``bias_ih_l{k}{s}`` / ``bias_hh_l{k}{s}``: (G*H,), where the G gate blocks
  (LSTM 4, GRU 3, RNN 1) are stacked along the rows, so hidden unit ``j``
  owns rows ``g*H + j``;
- ``in_0 = input_size``; for ``k >= 1``, ``in_k = D*H``: the previous layer's
  output ``[forward; backward]``, so hidden unit ``j`` is column ``j`` (and
  ``H + j`` when bidirectional).

Output channels are the ``hidden_size`` hidden units (of every layer and
direction at once: the layer has one ``hidden_size``); input channels are the
``input_size`` features read by layer 0. The two are independent, so there are
no couplings between them. ``proj_size > 0`` (LSTM projections) is refused
for output channels; input channels can still be pruned.

Tracing: the output holds the hidden units on its last dim, twice in a row
when bidirectional (``[forward; backward]``); ``h_n`` (and ``c_n``) hold them
on their last dim. The initial states ``h0`` / ``c0`` carry hidden units too
(``ChannelDim(-1, space="out")``): what produces them is pruned with the hidden
units (an encoder's ``h_n`` handed to a decoder), and a model input or a
constant there keeps every hidden unit.

Equivalence checking: ``mask_in_channels`` zeroes the layer-0 input columns;
``mask_out_channels`` zeroes the connections a removed hidden unit has inside
the layer (its recurrent columns and the next layer's input columns), so the
masked original computes exactly what the pruned layer computes.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import torch
from torch import nn

from pruneframe import BasePruningFunc, ChannelDim, Coupling, hookimpl
from pruneframe.hookspecs import RegisterLayerPruner
from pruneframe.layer_pruner import keep_index, select_, validate_idxs, zero_

_GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}


def _gates(layer: nn.RNNBase) -> int:
    """The number of gate blocks stacked in the rows of each weight."""
    try:
        return _GATES[layer.mode]
    except KeyError:
        raise ValueError(
            f"{type(layer).__name__} has mode {layer.mode!r}; the rnn plugin knows {sorted(_GATES)}. "
            "Register a pruner for this layer type with DependencyGraph.register_customized_layer"
        ) from None


def _directions(layer: nn.RNNBase) -> int:
    return 2 if layer.bidirectional else 1


def _cells(layer: nn.RNNBase) -> Iterator[tuple[int, str]]:
    """(layer number, direction suffix) of every cell of the module."""
    for k in range(layer.num_layers):
        for suffix in ("", "_reverse")[: _directions(layer)]:
            yield k, suffix


def _refresh(layer: nn.RNNBase) -> None:
    """Let the module see its new tensors (``_flat_weights``, cuDNN's flat buffer)."""
    if hasattr(layer, "_init_flat_weights"):
        layer._init_flat_weights()
    else:  # older PyTorch: the flat list is built in flatten_parameters
        layer.flatten_parameters()


def _checked(layer: nn.RNNBase, idxs: Sequence[int], n: int, what: str) -> torch.Tensor:
    """``idxs`` validated against ``n`` channels, refusing to remove them all."""
    index = validate_idxs(layer, idxs, n, what.rstrip("s"))
    if index.numel() == n:
        raise ValueError(f"removing all {n} {what} of {type(layer).__name__} would leave it empty; keep at least one")
    return index


class RNNPruner(BasePruningFunc):
    """Prunes hidden units (output channels) and input features (input channels) of LSTM, GRU and RNN."""

    def get_out_channels(self, layer: nn.Module) -> int:
        return layer.hidden_size

    def get_in_channels(self, layer: nn.Module) -> int:
        return layer.input_size

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        """Remove hidden units ``idxs`` from every layer and direction."""
        if layer.proj_size > 0:
            raise ValueError(
                f"{type(layer).__name__} has proj_size={layer.proj_size}: its outputs are projections of the hidden "
                "units, which this pruner does not prune. Add it to ignored_layers, or build it without proj_size"
            )
        h = layer.hidden_size
        index = _checked(layer, idxs, h, "hidden units")
        if index.numel() == 0:
            return layer
        g = _gates(layer)
        keep = keep_index(h, index)
        rows = torch.cat([keep + gate * h for gate in range(g)])
        # Layers >= 1 read the previous layer's output [forward; backward].
        next_cols = torch.cat([keep + d * h for d in range(_directions(layer))])
        for k, suffix in _cells(layer):
            for name in (f"weight_ih_l{k}{suffix}", f"weight_hh_l{k}{suffix}", f"bias_ih_l{k}{suffix}", f"bias_hh_l{k}{suffix}"):
                if hasattr(layer, name):  # biases are absent with bias=False
                    select_(layer, name, 0, rows)
            select_(layer, f"weight_hh_l{k}{suffix}", 1, keep)
            if k >= 1:
                select_(layer, f"weight_ih_l{k}{suffix}", 1, next_cols)
        layer.hidden_size = h - index.numel()
        _refresh(layer)
        return layer

    def prune_in_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        """Remove input features ``idxs`` (columns of the layer-0 input weights of both directions)."""
        n = layer.input_size
        index = _checked(layer, idxs, n, "input features")
        if index.numel() == 0:
            return layer
        keep = keep_index(n, index)
        for suffix in ("", "_reverse")[: _directions(layer)]:
            select_(layer, f"weight_ih_l0{suffix}", 1, keep)
        layer.input_size = n - index.numel()
        _refresh(layer)
        return layer

    # --- tracing ------------------------------------------------------------------
    def input_channel_dims(self, layer: nn.Module, inputs: Sequence[torch.Tensor]) -> list[ChannelDim | None]:
        """The input (the first tensor) holds the input features on its last dim; h0 / c0 hold the hidden units.

        Integer tensors (a PackedSequence's batch sizes and orderings) carry
        no channels. Floating tensors after the input are initial states
        (num_layers * directions, batch, hidden): their last dim holds the
        layer's *output* channels, so whatever produces them is pruned with
        the hidden units (a model input there keeps them all).
        """
        dims: list[ChannelDim | None] = [None] * len(inputs)
        floating = [i for i, t in enumerate(inputs) if t.is_floating_point()]
        if floating:
            dims[floating[0]] = ChannelDim(-1)
        if layer.proj_size == 0:
            for i in floating[1:]:
                dims[i] = ChannelDim(-1, space="out")
        return dims

    def output_channel_dims(self, layer: nn.Module, outputs: Sequence[torch.Tensor]) -> list[ChannelDim | None]:
        """Output: hidden units on the last dim, once per direction; h_n / c_n: on the last dim.

        With ``proj_size > 0`` the outputs hold projections, not hidden units: None.
        """
        dims: list[ChannelDim | None] = [None] * len(outputs)
        if layer.proj_size > 0:
            return dims
        floating = [i for i, t in enumerate(outputs) if t.is_floating_point()]
        for n, i in enumerate(floating):
            dims[i] = ChannelDim(-1, repeat=_directions(layer) if n == 0 else 1)
        return dims

    def in_out_coupled(self, layer: nn.Module) -> bool:
        return False

    def couplings(self, layer: nn.Module, n_out: int, n_in: int) -> list[Coupling]:
        """No ties: the input width and the hidden width are independent."""
        return []

    # --- equivalence checking -------------------------------------------------------
    def mask_in_channels(self, layer: nn.Module, idxs: Sequence[int]) -> None:
        """Zero the layer-0 input columns of input features ``idxs`` (both directions)."""
        index = torch.as_tensor(list(idxs), dtype=torch.long)
        for suffix in ("", "_reverse")[: _directions(layer)]:
            zero_(layer, f"weight_ih_l0{suffix}", 1, index)

    def mask_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> None:
        """Zero every connection inside the layer that reads hidden units ``idxs``.

        These are the recurrent columns ``j`` of every cell and, for layers
        ``k >= 1``, the input columns ``j`` (and ``H + j`` when bidirectional)
        that read the previous layer's output. The removed units still compute
        something in the masked original, but nothing kept reads it.
        """
        index = torch.as_tensor(list(idxs), dtype=torch.long)
        h = layer.hidden_size
        next_cols = torch.cat([index + d * h for d in range(_directions(layer))])
        for k, suffix in _cells(layer):
            zero_(layer, f"weight_hh_l{k}{suffix}", 1, index)
            if k >= 1:
                zero_(layer, f"weight_ih_l{k}{suffix}", 1, next_cols)


@hookimpl(trylast=True)
def pruneframe_layer_pruners(register: RegisterLayerPruner) -> None:
    """Register the recurrent pruner as ``lstm``, ``gru`` and ``rnn``."""
    register(RNNPruner(), [nn.LSTM], name="lstm")
    register(RNNPruner(), [nn.GRU], name="gru")
    register(RNNPruner(), [nn.RNN], name="rnn")
