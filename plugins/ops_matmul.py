"""Op handlers for matrix products and attention: mm, bmm, addmm, baddbmm, matmul, scaled dot-product attention.

For ``a (..., M, K) @ b (..., K, N)``: channels along the contracted K of both
operands are pruned together; if only one operand holds channels along K, the
other cannot shrink, so those channels go all together or not at all. The
output keeps the channels of whichever operand is not contracted over its
channels (``P @ v`` keeps ``v``'s).

The batch dimensions (all but the last two) pair slice ``p`` of one operand
with slice ``p`` of the other: attention head ``h`` of ``q`` with head ``h`` of
``k``, and the scores' head ``h`` with head ``h`` of ``v``. A slice may vanish
only in both operands, which ``ctx.tie_slices`` records; the result's slices
carry that tie onward (``softmax(q @ k^T) @ v`` ties the heads of all three).

Grouped-query attention repeats each key/value head across its query heads,
so one operand holds the same channels in several slices: in the ordinary
trace that ties a key/value head to all its query heads. Each handler offers a
``query_heads_variant`` (see ``pruneframe.pruner.query_heads``) for a second
trace in which such a repeated operand is a copy that stays: its channels are
kept, and each slice of the other operand (a query head) becomes a block of
its own, with the result's slice (that head's output) following it.
"""
from __future__ import annotations

import math

import torch

from pruneframe import hookimpl
from pruneframe.tracing import tensors_in
from pruneframe.tracing.labels import align

aten = torch.ops.aten


def _varies(ids, dim: int) -> bool:
    return ids is not None and ids.dim() >= 2 and ids.shape[dim] > 1


def _aligned(ctx, t, nd: int):
    ids = ctx.ids(t)
    return None if ids is None else align(ids, nd)


def _product(ctx, a, b, out):
    nd = out.dim()
    la, lb = _aligned(ctx, a, nd), _aligned(ctx, b, nd)
    a_k, b_k = _varies(la, -1), _varies(lb, -2)
    if a_k and b_k:
        if _varies(la, -2) or _varies(lb, -1):
            reason = "a matrix product whose operands hold channels along two dimensions"
            ctx.block(la, reason)
            ctx.block(lb, reason)
            return None
        ctx.couple(la.transpose(-1, -2), lb)
    elif a_k:
        ctx.couple_along(la, -1)
    elif b_k:
        ctx.couple_along(lb, -2)
    slices = ctx.tie_slices([la, lb], out.shape, range(nd - 2))
    # The result's channels: along M from a, along N from b; an operand holding channels only along the
    # batch dimensions (or the contracted one) passes on none of its own, its slices are tied above.
    # (along the contracted dimension an operand's channels were tied together above: one of them stands for all)
    keep_a = la.narrow(-1, 0, 1) if la is not None and _varies(la, -2) else None
    keep_b = lb.narrow(-2, 0, 1) if lb is not None and _varies(lb, -1) else None
    if keep_a is not None and keep_b is not None:
        ctx.couple(keep_a, keep_b)  # a channel of each at every position: they can only go together
        return torch.where(keep_a >= 0, keep_a, keep_b)
    kept = keep_a if keep_a is not None else keep_b
    if kept is None and not (a_k or b_k):  # constant along M, K and N: the operands' labels pass through
        kept = la if la is not None else lb
        if la is not None and lb is not None:
            ctx.couple(la, lb)
    if kept is None:
        return slices
    return kept


def _add_bias(ctx, bias, merged, out):
    lbias = ctx.ids(bias)
    if lbias is None:
        return merged
    lbias = align(lbias, out.dim())
    if merged is None:  # the product is a constant: the bias cannot shrink where it is not broadcast
        for d in range(out.dim()):
            if lbias.shape[d] > 1:
                ctx.couple_along(lbias, d)
        return lbias
    ctx.couple(merged, lbias)
    return torch.where(merged >= 0, merged, lbias)


def matrix_product(ctx, op, args, kwargs, out) -> None:
    packet = op.overloadpacket
    if packet in (aten.addmm, aten.baddbmm):
        bias, a, b = args[0], args[1], args[2]
    else:
        bias, a, b = None, args[0], args[1]
    if a.dim() < 2 or b.dim() < 2:  # vector products: a vector that holds channels cannot lose them
        la, lb = ctx.ids(a), ctx.ids(b)
        for ids in (la, lb):
            if ids is not None and ids.numel() > 1:
                ctx.block(ids, f"{op} of a vector that holds channels")
        ctx.set(out, None)
        return
    merged = _product(ctx, a, b, out)
    if bias is not None:
        merged = _add_bias(ctx, bias, merged, out)
    ctx.set(out, merged)


def _repeat_heads(ids, heads: int):
    if ids is None or ids.shape[-3] in (1, heads):
        return ids
    return ids.repeat_interleave(heads // ids.shape[-3], dim=-3)


def attention(ctx, op, args, kwargs, out) -> None:
    """Scaled dot-product attention: softmax(q k^T) v, with grouped-query key/value heads repeated."""
    q, k, v = args[0], args[1], args[2]
    outputs = tensors_in(out)
    nd = q.dim()
    heads = q.shape[-3] if nd >= 3 else 1
    lq, lk, lv = (_aligned(ctx, t, nd) for t in (q, k, v))
    if nd >= 3:
        lk, lv = _repeat_heads(lk, heads), _repeat_heads(lv, heads)
    q_e, k_e = _varies(lq, -1), _varies(lk, -1)
    if q_e and k_e and not _varies(lq, -2) and not _varies(lk, -2):
        ctx.couple(lq, lk)
    else:
        for ids, has in ((lq, q_e), (lk, k_e)):
            if has:
                ctx.couple_along(ids, -1)
    result = None
    if lv is not None:
        if _varies(lv, -2):
            ctx.block(lv, f"{op} mixes value positions that hold channels")
        else:
            result = lv
    if nd >= 3:  # head h of q, k and v exist only together
        slices = ctx.tie_slices([lq, lk, lv], outputs[0].shape, range(nd - 2))
        if result is None:
            result = slices
    for extra in tensors_in((args[3:], kwargs)):
        ctx.block(ctx.ids(extra), f"an attention mask or bias of {op} that holds channels")
    ctx.set(outputs[0], result)
    for t in outputs[1:]:
        ctx.set(t, None)


def _repeated(ids, other, nd: int) -> bool:
    """Whether ``ids`` holds the same channels in several slices where ``other`` holds different channels in each.

    Both are labels aligned to ``nd`` dims; the slices are those of the batch dimensions along which either varies.
    """
    if ids is None or other is None or nd < 3 or not bool((ids > 0).any()):
        return False
    batch = [max(ids.shape[d], other.shape[d]) for d in range(nd - 2)]
    own = ids.expand(batch + list(ids.shape[nd - 2:])).reshape(math.prod(batch), -1)
    theirs = other.expand(batch + list(other.shape[nd - 2:])).reshape(math.prod(batch), -1)
    if theirs.shape[0] < 2 or not bool((theirs > 0).all()):
        return False
    # slices equal in ``other`` (the batch of a bmm that merged batch and heads) are equal in ``ids`` too; fewer distinct
    # rows of ``ids`` than of ``other`` then means that ``ids`` repeats one slice's channels where ``other`` does not
    _, theirs_row = torch.unique(theirs, dim=0, return_inverse=True)
    _, own_row = torch.unique(own, dim=0, return_inverse=True)
    distinct = int(theirs_row.max()) + 1
    follows = torch.unique(torch.stack([theirs_row, own_row]), dim=1).shape[1] == distinct
    return follows and int(own_row.max()) + 1 < distinct


def _keep_copies(ctx, op, kept, copies, shape) -> torch.Tensor | None:
    """The copied operands stay; ``kept`` (one operand) loses only whole slices, and the result's slices follow them."""
    for ids in copies:
        ctx.block(ids, f"{op}: in a query-head trace the repeated key/value channels stay")
    nd = len(shape)
    if _varies(kept, -1):
        ctx.couple_along(kept, -1)  # its positions along the contracted dimension meet copies that stay
    return ctx.tie_slices([kept], shape, range(nd - 2))


def matrix_product_keeping_copies(ctx, op, args, kwargs, out) -> None:
    """``matrix_product`` for a query-head trace: an operand repeated across the slices of the other is a copy that stays."""
    packet = op.overloadpacket
    a, b = (args[1], args[2]) if packet in (aten.addmm, aten.baddbmm) else (args[0], args[1])
    if packet not in (aten.addmm, aten.mm) and a.dim() >= 3 and b.dim() >= 3:
        nd = out.dim()
        la, lb = _aligned(ctx, a, nd), _aligned(ctx, b, nd)
        for kept, copied in ((la, lb), (lb, la)):
            if _repeated(copied, kept, nd):
                ctx.set(out, _keep_copies(ctx, op, kept, [copied], out.shape))
                return
    matrix_product(ctx, op, args, kwargs, out)


def attention_keeping_copies(ctx, op, args, kwargs, out) -> None:
    """``attention`` for a query-head trace: keys and values repeated across query heads stay; query heads go whole."""
    q, k, v = args[0], args[1], args[2]
    nd = q.dim()
    outputs = tensors_in(out)
    extra = [ctx.ids(t) for t in tensors_in((args[3:], kwargs))]
    if nd >= 3 and all(ids is None for ids in extra):  # a mask or bias holding channels: the ordinary handler blocks it
        lq, lk, lv = (_aligned(ctx, t, nd) for t in (q, k, v))
        lk, lv = _repeat_heads(lk, q.shape[-3]), _repeat_heads(lv, q.shape[-3])
        shape = outputs[0].shape
        if _repeated(lk, lq, nd) and (lv is None or _repeated(lv, lq, nd)):
            ctx.set(outputs[0], _keep_copies(ctx, op, lq, [ids for ids in (lk, lv) if ids is not None], shape))
            for t in outputs[1:]:
                ctx.set(t, None)
            return
    attention(ctx, op, args, kwargs, out)


matrix_product.query_heads_variant = matrix_product_keeping_copies
attention.query_heads_variant = attention_keeping_copies


@hookimpl(trylast=True)
def pruneframe_op_handlers(register):
    register([aten.mm, aten.bmm, aten.addmm, aten.baddbmm, aten.matmul], matrix_product, name="matrix-product")
    register(
        [aten._scaled_dot_product_flash_attention_for_cpu, aten._scaled_dot_product_efficient_attention,
         aten._scaled_dot_product_flash_attention, aten.scaled_dot_product_attention,
         aten._scaled_dot_product_attention_math],
        attention, name="attention",
    )
