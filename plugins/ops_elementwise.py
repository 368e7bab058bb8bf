"""Op handlers for elementwise ops: every ATen op tagged pointwise, and ops shaped like them.

Inputs are aligned by broadcasting; channels at the same position are pruned
together, except an operand broadcast along a dimension where another's
channels vary (a per-head-dim weight times every head): it is tied to them and
goes only when all of them do. A constant input (no channels) that is not broadcast along a
dimension pins that dimension: the channels along it go all together or not at
all (e.g. rotary cos/sin tables fix a head's width).
"""
from __future__ import annotations

import torch

from pruneframe import hookimpl
from pruneframe.tracing import tensors_in
from pruneframe.tracing.labels import align

aten = torch.ops.aten


def elementwise(ctx, op, args, kwargs, out) -> None:
    outputs = tensors_in(out)
    shape = outputs[0].shape
    nd = len(shape)
    labelled, sizes, constants = [], [], []
    for t in tensors_in((args, kwargs)):
        ids = ctx.ids(t)
        if ids is None:
            if t.dim() > 0:
                constants.append(t)
        else:
            labelled.append(align(ids, nd))
            sizes.append((1,) * (nd - t.dim()) + tuple(t.shape))
    for t in constants:
        padded = (1,) * (nd - t.dim()) + tuple(t.shape)
        for d in range(nd):
            if padded[d] == shape[d] > 1:
                for ids in labelled:
                    ctx.couple_along(ids, d)
    labelled = _tie_broadcast(ctx, labelled, sizes, shape)
    merged = None
    for ids in labelled:
        if merged is None:
            merged = ids
        else:
            ctx.couple(merged, ids)
            merged = torch.where(merged >= 0, merged, ids)
    for t in outputs:
        ctx.set(t, merged if t.shape == shape else None)


def _tie_broadcast(ctx, labelled: list[torch.Tensor], sizes: list[tuple[int, ...]], shape) -> list[torch.Tensor]:
    """Operands broadcast along a dimension where another operand's channels vary are tied to them, not coupled.

    ``x * w`` with ``x`` (heads, head dim) and ``w`` (head dim): channel ``d`` of
    ``w`` multiplies channel ``d`` of every head, so a head may go while ``w``
    stays, and ``w[d]`` goes only when ``d`` goes from every head
    (``OpContext.tie_to_rows``); coupling them would tie every head to every
    other. Broadcast means the tensor itself has size 1 there (``sizes``), not
    only its label (a model input's label is one id everywhere). Applied only
    when one operand varies along every dimension any operand varies along (it
    then labels the result); otherwise all are coupled, as before.
    """
    if len(labelled) < 2:
        return labelled
    nd = len(shape)
    widest = [max(ids.shape[d] for ids in labelled) for d in range(nd)]
    full = [ids for ids in labelled if list(ids.shape) == widest]
    if not full:
        return labelled
    kept = []
    for ids, size in zip(labelled, sizes):
        spread = [d for d in range(nd) if size[d] == 1 < shape[d] and widest[d] > 1]
        if not spread or any(ids is f for f in full):
            kept.append(ids)
            continue
        rest = [d for d in range(nd) if d not in spread]
        order = [*rest, *spread]
        width = 1
        for d in spread:
            width *= widest[d]
        rows = full[0].expand(widest).permute(*order).reshape(-1, width)
        ctx.tie_to_rows(ids.expand(widest).permute(*order).reshape(-1, width)[:, 0], rows)
    return kept


def copy_into(ctx, op, args, kwargs, out) -> None:
    """copy_(dst, src) and copy(dst, src): the result holds src's channels, broadcast to dst's shape."""
    dst, src = args[0], args[1]
    ctx.set(out, ctx.full(src).expand(dst.shape) if ctx.ids(src) is not None else None)


def _is_pointwise(op) -> bool:
    return torch.Tag.pointwise in getattr(op, "tags", ())


SHAPED_LIKE_ELEMENTWISE = [
    aten.hardswish, aten.hardswish_, aten.native_dropout, aten._to_copy, aten.detach, aten.alias,
    aten.lift_fresh, aten.fill_, aten.zero_, aten.bernoulli_, aten.bernoulli, aten.uniform_, aten.normal_,
    aten.zeros_like, aten.ones_like, aten.full_like, aten.empty_like, aten.rand_like, aten.randn_like,
    aten._prelu_kernel, aten.dropout, aten.feature_dropout, aten.contiguous, aten.clone,
]


@hookimpl(trylast=True)
def pruneframe_op_handlers(register):
    register(SHAPED_LIKE_ELEMENTWISE, elementwise, name="elementwise-shaped")
    register([aten.copy_, aten.copy], copy_into, name="copy")
    register(_is_pointwise, elementwise, name="pointwise")
