"""Op handlers for elementwise ops: every ATen op tagged pointwise, and ops shaped like them.

Inputs are aligned by broadcasting; channels at the same position are pruned
together. A constant input (no channels) that is not broadcast along a
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
    labelled, constants = [], []
    for t in tensors_in((args, kwargs)):
        ids = ctx.ids(t)
        if ids is None:
            if t.dim() > 0:
                constants.append(t)
        else:
            labelled.append(align(ids, nd))
    for t in constants:
        padded = (1,) * (nd - t.dim()) + tuple(t.shape)
        for d in range(nd):
            if padded[d] == shape[d] > 1:
                for ids in labelled:
                    ctx.couple_along(ids, d)
    merged = None
    for ids in labelled:
        if merged is None:
            merged = ids
        else:
            ctx.couple(merged, ids)
            merged = torch.where(merged >= 0, merged, ids)
    for t in outputs:
        ctx.set(t, merged if t.shape == shape else None)


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
