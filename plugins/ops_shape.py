"""Op handlers for data movement: views, reshapes, permutes, concat, split, slicing, indexing, shuffles.

Each op runs again on the channel labels of its data argument, so where every
channel lands is computed from the real shapes, not guessed. On top of that:

- a reshape that splits one dimension into several lets only one of them
  change size: the one given as -1, else the innermost. Channels along the
  others go together (channel shuffle's groups, a head's width);
- selecting or indexing a dimension that holds channels uses fixed
  positions, so channels along it cannot be pruned independently;
- slicing one (``x[:, a:b]``) keeps its channels prunable when the trace can
  record it: the run check after a prune then demands the bounds the
  surviving channels give, so a literal bound undoes the prune (otherwise,
  a step other than 1 or a label varying along several dims, it pins them);
- ``chunk`` (``split`` into equal pieces of a size) keeps the pieces equal:
  position j goes from every piece at once; ``split`` with a list of sizes and
  ``unbind`` fix the sizes, so channels along that dimension stay.
"""
from __future__ import annotations

import torch

from pruneframe import hookimpl
from pruneframe.tracing import tensors_in

aten = torch.ops.aten


def _assign(ctx, out, result) -> None:
    for o, r in zip(tensors_in(out), tensors_in(result)):
        ctx.set(o, r)


def _varies(ids, dim: int) -> bool:
    return ids is not None and ids.dim() > 0 and ids.shape[dim] > 1


def replay(ctx, op, args, kwargs, out) -> None:
    _assign(ctx, out, ctx.replay(op, args, kwargs))


def _dim_groups(a: list[int], b: list[int]) -> list[tuple[list[int], list[int]]]:
    """Pair runs of input dims with runs of output dims that hold the same elements."""
    groups, i, j = [], 0, 0
    while i < len(a) and j < len(b):
        gi, gj, pa, pb = [i], [j], a[i], b[j]
        i, j = i + 1, j + 1
        while pa != pb:
            if pa < pb and i < len(a):
                gi.append(i)
                pa *= a[i]
                i += 1
            elif pb < pa and j < len(b):
                gj.append(j)
                pb *= b[j]
                j += 1
            else:
                break
        groups.append((gi, gj))
    return groups


def reshape(ctx, op, args, kwargs, out) -> None:
    ctx.set(out, ctx.full(args[0]).reshape(out.shape))  # a view of an expanded label may need a copy
    ids = ctx.ids(out)
    if ids is None:
        return
    sizes = list(args[1]) if len(args) > 1 and isinstance(args[1], (list, tuple)) else []
    for d in range(out.dim()):  # a size the code gave (not -1) along channels may be a literal
        if _varies(ids, d) and not (d < len(sizes) and sizes[d] == -1):
            ctx.sized_by_code(ids)
            break
    for _, outs in _dim_groups(list(args[0].shape), list(out.shape)):
        varying = [d for d in outs if _varies(ids, d)]
        free = [d for d in outs if d < len(sizes) and sizes[d] == -1]
        if free:  # the code fixed every other size, even when the -1 one holds a single position (one head)
            keep_free = free[0]
        elif len(varying) < 2:
            continue
        else:
            keep_free = varying[-1]
        for d in varying:
            if d != keep_free:
                ctx.couple_along(ids, d)


def expanding(ctx, op, args, kwargs, out) -> None:
    """expand(sizes): channels along a dimension given a size (not -1) by the code may meet a literal."""
    replay(ctx, op, args, kwargs, out)
    ids, sizes = ctx.ids(out), list(args[1])
    if any(_varies(ids, d) and sizes[d] != -1 for d in range(out.dim())):
        ctx.sized_by_code(ids)


def _pin(ctx, source, dim: int) -> None:
    ids = ctx.ids(source)
    if _varies(ids, dim % source.dim()):
        ctx.couple_along(ids, dim % source.dim())


def slicing(ctx, op, args, kwargs, out) -> None:
    replay(ctx, op, args, kwargs, out)
    x = args[0]
    dim = (args[1] if len(args) > 1 else 0) % max(x.dim(), 1)
    start = args[2] if len(args) > 2 else None
    end = args[3] if len(args) > 3 else None
    step = args[4] if len(args) > 4 else 1
    whole = (start in (None, 0)) and (end is None or end >= x.shape[dim]) and step == 1
    if not whole and (step != 1 or not ctx.slice_follows_prunes(x, dim, start, end)):
        _pin(ctx, x, dim)


def selecting(ctx, op, args, kwargs, out) -> None:
    """select, index_select, gather: fixed positions along args[1]."""
    replay(ctx, op, args, kwargs, out)
    _pin(ctx, args[0], args[1])


def indexing(ctx, op, args, kwargs, out) -> None:
    replay(ctx, op, args, kwargs, out)
    for d, index in enumerate(args[1]):
        if index is not None:
            _pin(ctx, args[0], d)


def embedding(ctx, op, args, kwargs, out) -> None:
    replay(ctx, op, args, kwargs, out)
    _pin(ctx, args[0], 0)


def splitting(ctx, op, args, kwargs, out) -> None:
    """split(size) (from chunk): equal pieces stay equal; split_with_sizes and unbind: fixed sizes, fixed positions."""
    replay(ctx, op, args, kwargs, out)
    x = args[0]
    if op.overloadpacket is aten.unbind:
        _pin(ctx, x, args[1] if len(args) > 1 else kwargs.get("dim", 0))
        return
    dim = (args[2] if len(args) > 2 else kwargs.get("dim", 0)) % x.dim()
    ids = ctx.ids(x)
    if not _varies(ids, dim):
        return
    pieces = [t.shape[dim] for t in tensors_in(out)]
    # split_with_sizes carries the sizes themselves, which the model's code then asks for again: they cannot change.
    # split(size) is what chunk(n) becomes: equal pieces, recomputed from the current width.
    fixed_sizes = op.overloadpacket in (aten.split_with_sizes, aten.split_with_sizes_copy) or op is aten.split.sizes
    if fixed_sizes or len(set(pieces)) != 1 or sum(pieces) != x.shape[dim]:
        _pin(ctx, x, dim)
        return
    ctx.sized_by_code(ids)  # split(x, size): the size may be a literal rather than chunk's width // n
    moved = ids.movedim(dim, 0)
    grid = moved.reshape(len(pieces), pieces[0], *moved.shape[1:])
    ctx.couple(grid[1:], grid[:1])


def channel_shuffle(ctx, op, args, kwargs, out) -> None:
    replay(ctx, op, args, kwargs, out)
    x, groups = args[0], args[1]
    ids = ctx.ids(x)
    if _varies(ids, 1):
        ctx.couple_along(ids.reshape(ids.shape[0], groups, ids.shape[1] // groups, *ids.shape[2:]), 1)


def padding(ctx, op, args, kwargs, out) -> None:
    """Pads the last len(pad)//2 dims; a padded position belongs to the channel it pads."""
    x, pad = args[0], list(args[1])
    ids = ctx.ids(x)
    padded_dims = [x.dim() - 1 - k for k in range(len(pad) // 2) if pad[2 * k] or pad[2 * k + 1]]
    if any(_varies(ids, d) for d in padded_dims):
        ctx.block(ids, f"{op} pads a dimension that holds channels")
        ctx.set(out, ctx.blocked_label(out))
    else:
        ctx.set(out, ids)


def concat(ctx, op, args, kwargs, out) -> None:
    _assign(ctx, out, ctx.replay(op, args, kwargs))


@hookimpl(trylast=True)
def pruneframe_op_handlers(register):
    register(
        [aten.permute, aten.transpose, aten.t, aten.unsqueeze, aten.squeeze, aten.repeat,
         aten.repeat_interleave, aten.flip, aten.roll, aten.pixel_shuffle, aten.pixel_unshuffle,
         aten.unfold, aten.movedim, aten.swapaxes, aten.permute_copy, aten.squeeze_copy,
         aten.unsqueeze_copy, aten.transpose_copy],
        replay, name="move",
    )
    register([aten.expand, aten.expand_copy], expanding, name="expand")
    register([aten.view, aten._unsafe_view, aten.reshape, aten._reshape_alias, aten.view_copy], reshape, name="reshape")
    register([aten.cat, aten.stack, aten.concat, aten.concatenate], concat, name="concat")
    register([aten.slice, aten.slice_copy], slicing, name="slice")
    register([aten.select, aten.index_select, aten.gather, aten.select_copy], selecting, name="select")
    register([aten.index], indexing, name="index")
    register([aten.embedding], embedding, name="embedding")
    register([aten.split, aten.split_with_sizes, aten.unbind, aten.unsafe_split, aten.split_copy], splitting, name="split")
    register([aten.channel_shuffle, aten.native_channel_shuffle], channel_shuffle, name="channel-shuffle")
    register([aten.constant_pad_nd, aten.reflection_pad1d, aten.reflection_pad2d, aten.reflection_pad3d,
              aten.replication_pad1d, aten.replication_pad2d, aten.replication_pad3d], padding, name="pad")
