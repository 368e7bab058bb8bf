"""Layer pruner for ``nn.MultiheadAttention``: prunes ``embed_dim`` everywhere it appears.

In ``nn.MultiheadAttention`` one attribute, ``embed_dim``, is the width of the
query input, of the output, and of the per-head query/key/value space inside.
Pruning channels ``idxs`` therefore removes, with the same indices:

- the input columns of the query projection (and of the key / value
  projections whose ``kdim`` / ``vdim`` equal ``embed_dim``);
- the rows ``idxs`` of each of the q, k and v blocks of ``in_proj_weight`` /
  ``in_proj_bias`` (or of ``q_proj_weight`` / ``k_proj_weight`` /
  ``v_proj_weight``), and of ``bias_k`` / ``bias_v``;
- the columns (inputs) and rows (outputs) of ``out_proj``.

Input and output channels are one space (``prune_in_channels`` is
``prune_out_channels``). A key or value of another width (``kdim`` /
``vdim`` != ``embed_dim``) keeps its width: only the rows of its projection
go, and the tracer blocks the channels that feed it.

Heads: ``nn.MultiheadAttention`` splits the inner space into ``num_heads``
contiguous chunks of ``head_dim``. A prune must leave every head whole, so it
accepts either
- whole heads (every index of some heads): those heads go, ``num_heads``
  shrinks and ``head_dim`` stays; or
- the same number ``c`` of positions from every head: ``head_dim`` shrinks by
  ``c`` and ``num_heads`` stays.
Anything else would move channels from one head into another (the chunks
shift), silently changing what every head attends to, so it is refused with a
``ValueError`` that names the per-head counts. By default the graph also ties
position ``j`` of every head together, so every group it forms is of the second
kind and can be pruned; ``MultiheadAttentionPruner(tie_head_positions=False)``
(through ``register_customized_layer``) lets groups remove whole heads instead,
and ``check_pruning_group`` then refuses groups that would leave heads unequal.

Equivalence checking: removing whole heads is exactly the original with the
removed inputs and heads zeroed, and ``mask_out_channels`` builds that
reference. Shrinking ``head_dim`` is not: attention scores are scaled by
``1/sqrt(head_dim)``, so the kept dimensions of every head are weighted
differently afterwards and no zeroing of the original reproduces it;
``mask_out_channels`` refuses that case with ``NotImplementedError``.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from pruneframe import BasePruningFunc, ChannelDim, Coupling, hookimpl
from pruneframe.hookspecs import RegisterLayerPruner
from pruneframe.layer_pruner import keep_index, select_, validate_idxs, zero_

# A layer whose kdim / vdim differed from embed_dim keeps that independence even
# if pruning later makes embed_dim equal to it by coincidence; remembered here.
_INDEPENDENT_KV = "_pruneframe_independent_kv"


def _independent_kv(layer: nn.MultiheadAttention) -> tuple[bool, bool]:
    """Whether the key and the value inputs have widths of their own (not ``embed_dim``)."""
    remembered = layer.__dict__.get(_INDEPENDENT_KV)
    if remembered is not None:
        return remembered
    return layer.kdim != layer.embed_dim, layer.vdim != layer.embed_dim


def _head_split(layer: nn.MultiheadAttention, index: torch.Tensor) -> tuple[int, int]:
    """How a removal of ``index`` keeps heads whole: (heads removed, positions removed per head).

    Raises ValueError, naming the numbers, when the removal would leave heads
    of different widths or ``embed_dim`` not divisible by ``num_heads``.
    """
    e, h = layer.embed_dim, layer.num_heads
    hd = e // h
    n = index.numel()
    if n == e:
        raise ValueError(
            f"removing all {e} channels of MultiheadAttention would leave it empty; keep at least one head"
        )
    counts = torch.bincount(index // hd, minlength=h)
    touched = counts[counts > 0]
    if bool((touched == hd).all()):
        return int(touched.numel()), 0  # whole heads
    if n % h != 0:
        raise ValueError(
            f"removing {n} of MultiheadAttention's {e} channels would leave embed_dim={e - n}, not divisible by "
            f"num_heads={h}; remove a multiple of {h} channels (the same number from every head of {hd}) "
            f"or whole heads ({hd} channels each)"
        )
    if not bool((counts == counts[0]).all()):
        raise ValueError(
            f"removing these {n} channels takes {counts.tolist()} channels from the {h} heads of MultiheadAttention "
            f"(head_dim={hd}); heads must stay equally wide, or channels would move from one head into another. "
            f"Remove {n // h} from every head (positions j, j+{hd}, j+{2 * hd}, ...) or whole heads "
            f"(channels k*{hd} .. k*{hd}+{hd - 1})"
        )
    return 0, int(counts[0])


class MultiheadAttentionPruner(BasePruningFunc):
    """Prunes ``embed_dim`` of ``nn.MultiheadAttention``; its input and output channels are one space.

    With ``tie_head_positions=True`` (the default) the graph also ties position
    ``j`` of every head together (channels ``j, j + head_dim, j + 2*head_dim,
    ...``), so every group it forms removes the same positions from every head
    and is always accepted, whatever ranks the channels. With False it ties only
    input ``i`` to output ``i``: groups may then remove whole heads, and
    ``check_pruning_group`` refuses those that would leave heads unequal.
    """

    def __init__(self, tie_head_positions: bool = True) -> None:
        self.tie_head_positions = tie_head_positions

    def with_whole_heads(self) -> "MultiheadAttentionPruner":
        """The variant that lets groups remove whole heads (MetaPruner asks for it with ``prune_num_heads``)."""
        return MultiheadAttentionPruner(tie_head_positions=False)

    def get_out_channels(self, layer: nn.Module) -> int:
        return layer.embed_dim

    def get_in_channels(self, layer: nn.Module) -> int:
        return layer.embed_dim

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        """Remove embedding channels ``idxs`` (whole heads, or the same count from every head)."""
        e = layer.embed_dim
        index = validate_idxs(layer, idxs, e, "embedding channel")
        if index.numel() == 0:
            return layer
        heads_removed, per_head = _head_split(layer, index)  # raises before anything changes
        independent_k, independent_v = _independent_kv(layer)
        keep = keep_index(e, index)
        keep_qkv = torch.cat([keep, keep + e, keep + 2 * e])  # rows of the stacked q, k, v blocks

        if layer.in_proj_weight is not None:
            select_(layer, "in_proj_weight", 0, keep_qkv)
            select_(layer, "in_proj_weight", 1, keep)
        else:
            for name, independent in (("q_proj_weight", False), ("k_proj_weight", independent_k), ("v_proj_weight", independent_v)):
                select_(layer, name, 0, keep)
                if not independent:
                    select_(layer, name, 1, keep)
        select_(layer, "in_proj_bias", 0, keep_qkv)
        select_(layer, "bias_k", 2, keep)
        select_(layer, "bias_v", 2, keep)
        select_(layer.out_proj, "weight", 0, keep)
        select_(layer.out_proj, "weight", 1, keep)
        select_(layer.out_proj, "bias", 0, keep)

        new_e = e - index.numel()
        if independent_k or independent_v:
            layer.__dict__[_INDEPENDENT_KV] = (independent_k, independent_v)
        layer.embed_dim = new_e
        layer.kdim = layer.kdim if independent_k else new_e
        layer.vdim = layer.vdim if independent_v else new_e
        layer.num_heads -= heads_removed
        layer.head_dim -= per_head
        layer.out_proj.in_features = new_e
        layer.out_proj.out_features = new_e
        return layer

    def check_prune(self, layer: nn.Module, kind: str, idxs: Sequence[int]) -> str | None:
        try:
            _head_split(layer, torch.as_tensor(list(idxs), dtype=torch.long))
        except ValueError as exc:
            return str(exc)
        return None

    # One space: an input channel is the output channel of the same index.
    prune_in_channels = prune_out_channels

    def in_out_coupled(self, layer: nn.Module) -> bool:
        return True

    def couplings(self, layer: nn.Module, n_out: int, n_in: int) -> list[Coupling]:
        r = torch.arange(min(n_out, n_in))
        found = [Coupling("in", r, "out", r)]
        h = layer.num_heads
        if self.tie_head_positions and h > 1 and n_out % h == 0:
            grid = torch.arange(n_out).view(h, n_out // h)  # row k: the channels of head k
            found.append(Coupling("out", grid[1:].flatten(), "out", grid[0].repeat(h - 1)))
        return found

    # --- tracing ------------------------------------------------------------------
    def input_channel_dims(self, layer: nn.Module, inputs: Sequence[torch.Tensor]) -> list[ChannelDim | None]:
        """Query, key and value (the first three tensors) hold the channels on their last dim; masks none.

        The tracer lists the tensors of the call's positional then keyword
        arguments, so the first three are query, key and value whenever they
        are passed first (positionally or as the first keywords), as every
        caller of ``nn.MultiheadAttention`` does. A key or value of a width of
        its own (``kdim`` / ``vdim`` != ``embed_dim``) is not in this space:
        None, so the channels that feed it are blocked. A non-floating tensor
        is a mask whatever its position.
        """
        independent_k, independent_v = _independent_kv(layer)
        channel_slots = (True, not independent_k, not independent_v)
        dims: list[ChannelDim | None] = [None] * len(inputs)
        for i, t in enumerate(inputs[:3]):
            if channel_slots[i] and t.is_floating_point():
                dims[i] = ChannelDim(-1)
        return dims

    def output_channel_dims(self, layer: nn.Module, outputs: Sequence[torch.Tensor]) -> list[ChannelDim | None]:
        """The attention output holds the channels on its last dim; the attention weights hold none."""
        dims: list[ChannelDim | None] = [None] * len(outputs)
        if outputs:
            dims[0] = ChannelDim(-1)
        return dims

    # --- equivalence checking -------------------------------------------------------
    def _input_projections(self, layer: nn.Module) -> list[str]:
        """The projection weights whose columns are embedding channels."""
        if layer.in_proj_weight is not None:
            return ["in_proj_weight"]
        independent_k, independent_v = _independent_kv(layer)
        names = ["q_proj_weight"]
        names += [] if independent_k else ["k_proj_weight"]
        names += [] if independent_v else ["v_proj_weight"]
        return names

    def mask_in_channels(self, layer: nn.Module, idxs: Sequence[int]) -> None:
        """Zero the projection columns that read input channels ``idxs`` (query, and key/value of width embed_dim)."""
        index = torch.as_tensor(list(idxs), dtype=torch.long)
        for name in self._input_projections(layer):
            zero_(layer, name, 1, index)

    def mask_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> None:
        """Zero what the layer loses inside itself when channels ``idxs`` go; exact for whole heads only.

        The input columns ``idxs`` go (input and output are one space), and the
        removed heads no longer reach ``out_proj``. Shrinking ``head_dim``
        instead changes the ``1/sqrt(head_dim)`` score scale of every kept
        head, which no zeroing reproduces, so that is refused.
        """
        index = torch.as_tensor(list(idxs), dtype=torch.long)
        if index.numel() == 0:
            return
        hd = layer.embed_dim // layer.num_heads
        counts = torch.bincount(index // hd, minlength=layer.num_heads)
        if not bool((counts[counts > 0] == hd).all()):
            raise NotImplementedError(
                f"MultiheadAttention lost {counts.tolist()} channels per head (head_dim={hd}): a pruned head_dim changes "
                "the 1/sqrt(head_dim) attention-score scale of the kept dimensions, so no masked original equals the "
                "pruned model. Only whole-head prunes are exactly checkable; check this one by shapes and forward"
            )
        self.mask_in_channels(layer, index)
        zero_(layer.out_proj, "weight", 1, index)  # the removed heads' outputs no longer reach out_proj


@hookimpl(trylast=True)
def pruneframe_layer_pruners(register: RegisterLayerPruner) -> None:
    """Register the pruner for ``nn.MultiheadAttention`` as ``multihead_attention``."""
    register(MultiheadAttentionPruner(), [nn.MultiheadAttention], name="multihead_attention")
