"""Op handlers for pooling, interpolation, reductions and functional normalisation.

- pooling and interpolation work on the trailing spatial dims; channels pass
  through untouched (channels cannot sit on a pooled dim);
- a reduction over dims that hold channels is a sink: its result belongs to
  no channel, except that where other dims hold channels too (a norm over each
  head's dims) each slice of the result is tied to the channels it sums, so a
  head can go with its statistic; over other dims, channels pass through;
- softmax, cumsum and friends keep the shape and pass channels through;
- ``native_layer_norm`` / ``native_group_norm`` / ``native_batch_norm``:
  channels pass through and the affine parameters follow them.
"""
from __future__ import annotations

import torch

from pruneframe import hookimpl
from pruneframe.tracing import tensors_in
from pruneframe.tracing.labels import align

aten = torch.ops.aten


def _varies(ids, dim: int) -> bool:
    return ids is not None and ids.dim() > 0 and ids.shape[dim] > 1


def _spatial(n: int):
    def handler(ctx, op, args, kwargs, out) -> None:
        x = args[0]
        ids = ctx.ids(x)
        dims = [x.dim() - 1 - k for k in range(n)]
        outputs = tensors_in(out)
        if any(_varies(ids, d) for d in dims):
            ctx.block(ids, f"{op} pools over a dimension that holds channels")
            ctx.set(outputs[0], ctx.blocked_label(outputs[0]))
        else:
            ctx.set(outputs[0], ids)
        for t in outputs[1:]:  # pooling indices
            ctx.set(t, None)
    return handler


def _reduced_dims(op, args, kwargs, x) -> tuple[list[int], bool]:
    dims = args[1] if len(args) > 1 else kwargs.get("dim")
    if isinstance(dims, int):
        dims = [dims]
    if not isinstance(dims, (list, tuple)) or len(dims) == 0 or any(not isinstance(d, int) for d in dims):
        dims = list(range(x.dim()))
    keepdim = kwargs.get("keepdim", False)
    for a in args[2:]:
        if isinstance(a, bool):
            keepdim = a
            break
    return sorted({d % max(x.dim(), 1) for d in dims}), keepdim


def reduction(ctx, op, args, kwargs, out) -> None:
    x = args[0]
    ids = ctx.ids(x)
    dims, keepdim = _reduced_dims(op, args, kwargs, x)
    outputs = tensors_in(out)
    if ids is None or x.dim() == 0:
        result = None
    elif any(_varies(ids, d) for d in dims):  # summed over channels: the result belongs to none of them, but where other
        ids = align(ids, x.dim())             # dims hold channels (a norm over each head), each slice of it exists while
        others = [d for d in range(x.dim()) if d not in dims and _varies(ids, d)]  # its channels do (one per head)
        result = ctx.tie_slices([ids], x.shape, others) if others else None
        if result is not None and not keepdim:
            result = result.squeeze(dims)
    else:
        ids = align(ids, x.dim())
        result = ids if keepdim else ids.squeeze(dims) if dims else ids
    for t in outputs:
        ctx.set(t, result if result is not None and result.dim() == t.dim() else None)


def norm_reduction(ctx, op, args, kwargs, out) -> None:
    """norm / linalg_vector_norm(x, ord, dim, keepdim): the dims come third."""
    rest = list(args)
    rest.pop(1) if len(rest) > 1 else None
    reduction(ctx, op, rest, kwargs, out)


def along_dim(ctx, op, args, kwargs, out) -> None:
    """softmax, log_softmax, cumsum: same shape, channels pass through."""
    ctx.set(tensors_in(out)[0], ctx.ids(args[0]))


def _affine(ctx, x, params, channel_dims: list[int], ids) -> None:
    """Couple the per-channel parameters of a functional norm with the channels they scale."""
    for p in params:
        lp = ctx.ids(p) if isinstance(p, torch.Tensor) else None
        if not isinstance(p, torch.Tensor):
            continue
        shape = [1] * x.dim()
        for k, d in enumerate(channel_dims):
            shape[d] = p.shape[k] if k < p.dim() else 1
        if lp is None:  # a constant (e.g. running statistics): it cannot shrink
            if ids is not None:
                for d in channel_dims:
                    ctx.couple_along(align(ids, x.dim()), d)
            continue
        lp = lp.reshape([lp.shape[k] if k < lp.dim() else 1 for k in range(len(channel_dims))])
        view = [1] * x.dim()
        for k, d in enumerate(channel_dims):
            view[d] = lp.shape[k]
        if ids is None:
            ctx.couple_along(lp.reshape(view), channel_dims[0])
        else:
            ctx.couple(align(ids, x.dim()), lp.reshape(view))


def layer_norm(ctx, op, args, kwargs, out) -> None:
    x, shape = args[0], list(args[1])
    ids = ctx.ids(x)
    dims = list(range(x.dim() - len(shape), x.dim()))
    _affine(ctx, x, [a for a in args[2:4] if a is not None], dims, ids)
    outputs = tensors_in(out)
    ctx.set(outputs[0], ids)
    for t in outputs[1:]:
        ctx.set(t, None)


def channel_norm(ctx, op, args, kwargs, out) -> None:
    """native_group_norm(x, w, b, ...), native_batch_norm(x, w, b, running_mean, running_var, ...)."""
    x = args[0]
    ids = ctx.ids(x)
    params = [a for a in args[1:5] if isinstance(a, torch.Tensor)]
    _affine(ctx, x, params, [1], ids)
    outputs = tensors_in(out)
    ctx.set(outputs[0], ids)
    for t in outputs[1:]:
        ctx.set(t, None)


@hookimpl(trylast=True)
def pruneframe_op_handlers(register):
    for n, ops in {
        1: [aten.max_pool1d, aten.avg_pool1d, aten.adaptive_avg_pool1d, aten.adaptive_max_pool1d,
            aten.upsample_nearest1d, aten.upsample_linear1d, aten._upsample_nearest_exact1d, aten.max_pool1d_with_indices],
        2: [aten.max_pool2d, aten.max_pool2d_with_indices, aten.avg_pool2d, aten.adaptive_avg_pool2d,
            aten._adaptive_avg_pool2d, aten.adaptive_max_pool2d, aten.upsample_nearest2d, aten.upsample_bilinear2d,
            aten.upsample_bicubic2d, aten._upsample_nearest_exact2d, aten._upsample_bilinear2d_aa],
        3: [aten.max_pool3d, aten.max_pool3d_with_indices, aten.avg_pool3d, aten.adaptive_avg_pool3d,
            aten._adaptive_avg_pool3d, aten.adaptive_max_pool3d, aten.upsample_nearest3d, aten.upsample_trilinear3d],
    }.items():
        register(ops, _spatial(n), name=f"pool-{n}d")
    register(
        [aten.sum, aten.mean, aten.amax, aten.amin, aten.max.dim, aten.max.default, aten.min.dim, aten.min.default, aten.var, aten.std, aten.var_mean,
         aten.std_mean, aten.logsumexp, aten.prod, aten.argmax, aten.argmin, aten.any, aten.all],
        reduction, name="reduction",
    )
    register([aten.norm, aten.linalg_vector_norm], norm_reduction, name="norm")
    register([aten._softmax, aten._log_softmax, aten.softmax, aten.log_softmax, aten.cumsum, aten.cumprod,
              aten._safe_softmax], along_dim, name="softmax")
    register([aten.native_layer_norm, aten.layer_norm], layer_norm, name="layer-norm")
    register([aten.native_group_norm, aten.native_batch_norm, aten._native_batch_norm_legit,
              aten._native_batch_norm_legit_no_training, aten._native_batch_norm_legit_functional,
              aten.batch_norm, aten.group_norm], channel_norm, name="channel-norm")
