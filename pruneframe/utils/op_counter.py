"""Counts a model's multiply-accumulates (MACs) and parameters, as ``tp.utils.count_ops_and_params`` does.

The model runs once on the example inputs inside a ``TorchDispatchMode`` that
sees every ATen op and adds up the multiply-accumulates of the ones that do
products: matrix products, convolutions (transposed and grouped too),
attention kernels and the fused attention / encoder-layer / RNN kernels that
PyTorch's fast paths call. Everything else — bias adds, normalisation,
activations, pooling, softmax — is not counted: those are a few operations per
*output element*, not per weight, and counting them is what makes counters
disagree (this count matches ``torch.utils.flop_counter.FlopCounterMode``'s
FLOPs / 2 wherever that sees the same ops).

The pass runs on fake tensors when it can (shapes only, no arithmetic), and on
the real inputs otherwise. Either way the model is left exactly as it was.

Example::

    >>> import torch, pruneframe as tp
    >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Flatten(), torch.nn.Linear(128, 10))
    >>> tp.utils.count_ops_and_params(model, torch.randn(1, 3, 4, 4))
    (4736, 1514)

(the conv: 8 * 4 * 4 outputs of 3 * 3 * 3 MACs = 3456; the linear: 128 * 10 = 1280.)
"""
from __future__ import annotations

import contextlib
import logging
from typing import Any, Callable

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from ..runtime import default_forward, describe_inputs, inputs_hint, model_run, tensors_in
from ..wrappers import unwrap

logger = logging.getLogger(__name__)

__all__ = ["count_ops_and_params", "count_params"]

aten = torch.ops.aten

# A rule gets an op's positional args, keyword args and output, and returns its MACs. It reads shapes only,
# so it works on fake tensors; the one exception (variable-length attention) reads offsets, which a fake
# pass cannot give, and so is counted by the real pass.
_Rule = Callable[[tuple, dict, Any], int]


def _arg(args: tuple, kwargs: dict, index: int, name: str, default: Any = None) -> Any:
    if index < len(args):
        return args[index]
    return kwargs.get(name, default)


def _product(first: int) -> _Rule:
    """Matrix (or batched matrix, or matrix-vector, or dot) product whose left operand is ``args[first]``."""

    def rule(args: tuple, kwargs: dict, out: Any) -> int:
        left, right = args[first], args[first + 1]
        # left (..., n, k) times right (..., k, m): n * k * m per batch; a vector right operand has m = 1
        return left.numel() * (right.shape[-1] if right.dim() >= 2 else 1)

    return rule


def _convolution(transposed_at: int | None = None, always_transposed: bool = False) -> _Rule:
    """A convolution whose input is ``args[0]`` and weight ``args[1]``; ``transposed_at`` is where the flag is."""

    def rule(args: tuple, kwargs: dict, out: Any) -> int:
        x, weight = args[0], args[1]
        transposed = always_transposed
        if transposed_at is not None:
            transposed = bool(_arg(args, kwargs, transposed_at, "transposed", False))
        per_element = weight.numel() // weight.shape[0]  # (in or out channels per group) * kernel taps
        # A convolution computes each output element from in/groups * taps products; a transposed one
        # scatters each *input* element to out/groups * taps outputs (its weight is laid out (in, out/groups, ...)).
        elements = x if transposed else _first_tensor(out)
        return elements.numel() * per_element

    return rule


def _first_tensor(out: Any) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else tensors_in(out)[0]


def _attention_lhe(args: tuple, kwargs: dict, out: Any) -> int:
    """Scaled-dot-product attention on (..., heads, length, features): q @ k^T, then weights @ v."""
    q, k, v = args[0], args[1], args[2]
    if q.is_nested:
        return sum(_attention_lhe((qi, ki, vi), {}, None) for qi, ki, vi in zip(q.unbind(), k.unbind(), v.unbind()))
    queries = q.numel() // q.shape[-1]  # every (batch, head, position) of the query
    return queries * k.shape[-2] * (q.shape[-1] + v.shape[-1])


def _attention_lhe_varlen(offsets_at: int, offsets_names: tuple[str, str]) -> _Rule:
    """The lower-level attention kernels: (batch, length, heads, features), or packed with sequence offsets."""

    def rule(args: tuple, kwargs: dict, out: Any) -> int:
        q, k, v = args[0], args[1], args[2]
        cum_q = _arg(args, kwargs, offsets_at, offsets_names[0])
        cum_k = _arg(args, kwargs, offsets_at + 1, offsets_names[1])
        heads, features = q.shape[-2], q.shape[-1] + v.shape[-1]
        if cum_q is None:  # dense (batch, length, heads, features)
            return q.shape[0] * q.shape[1] * heads * k.shape[1] * features
        # packed: sequence i has queries cum_q[i + 1] - cum_q[i] and keys cum_k[i + 1] - cum_k[i]
        lengths_q, lengths_k = torch.diff(cum_q).tolist(), torch.diff(cum_k).tolist()
        return heads * features * sum(lq * lk for lq, lk in zip(lengths_q, lengths_k))

    return rule


def _sequences(t: torch.Tensor) -> list[tuple[int, int]]:
    """(batch, length) of the sequences in a (batch, length, features), (length, features) or nested tensor."""
    if t.is_nested:
        return [(1, piece.shape[0]) for piece in t.unbind()]
    if t.dim() == 2:
        return [(1, t.shape[0])]
    return [(t.shape[0], t.shape[1])]


def _native_multi_head_attention(args: tuple, kwargs: dict, out: Any) -> int:
    """``nn.MultiheadAttention``'s fast path: q/k/v projections, attention, output projection in one kernel."""
    query, key, embed_dim = args[0], args[1], args[3]
    qkv_weight, proj_weight = args[5], args[7]
    per_projection = qkv_weight.numel() // 3
    total = 0
    for (batch, lq), (_, lk) in zip(_sequences(query), _sequences(key)):
        total += batch * (lq * per_projection + 2 * lk * per_projection + 2 * lq * lk * embed_dim + lq * proj_weight.numel())
    return total


def _transformer_encoder_layer(args: tuple, kwargs: dict, out: Any) -> int:
    """``nn.TransformerEncoderLayer``'s fast path: self-attention and the feed-forward block in one kernel."""
    src, embed_dim = args[0], args[1]
    qkv_weight, proj_weight = args[3], args[5]
    ffn_1, ffn_2 = _arg(args, kwargs, 14, "ffn_weight_1"), _arg(args, kwargs, 16, "ffn_weight_2")
    per_token = qkv_weight.numel() + proj_weight.numel() + ffn_1.numel() + ffn_2.numel()
    return sum(batch * (length * per_token + 2 * length * length * embed_dim) for batch, length in _sequences(src))


def _recurrent(weights_at: int | None) -> _Rule:
    """A fused RNN kernel: every token of the input meets every weight matrix once (per layer and direction)."""

    def rule(args: tuple, kwargs: dict, out: Any) -> int:
        x = args[0]
        matrices = args[weights_at] if weights_at is not None else args[1:3]  # mkldnn: weight0 = w_ih, weight1 = w_hh
        tokens = x.numel() // x.shape[-1]  # (length, batch) or packed (total,): the features are the last dim
        return tokens * sum(w.numel() for w in matrices if w is not None and w.dim() == 2)

    return rule


def _build_rules() -> dict[Any, _Rule]:
    table: dict[str, _Rule] = {}
    for name in ("mm", "bmm", "mv", "dot", "vdot", "_int_mm", "_scaled_mm"):
        table[name] = _product(0)
    for name in ("addmm", "addmm_", "_addmm_activation", "baddbmm", "baddbmm_", "addbmm", "addbmm_", "addmv", "addmv_"):
        table[name] = _product(1)
    for name in ("convolution", "_convolution", "convolution_overrideable"):
        table[name] = _convolution(transposed_at=6)
    for name in ("cudnn_convolution", "cudnn_convolution_relu", "cudnn_convolution_add_relu", "miopen_convolution",
                 "miopen_depthwise_convolution", "mkldnn_convolution", "_slow_conv2d_forward", "slow_conv3d_forward",
                 "thnn_conv2d", "_conv_depthwise2d", "conv_depthwise3d", "slow_conv_dilated2d", "slow_conv_dilated3d",
                 "_nnpack_spatial_convolution"):
        table[name] = _convolution()
    for name in ("cudnn_convolution_transpose", "miopen_convolution_transpose", "slow_conv_transpose2d", "slow_conv_transpose3d"):
        table[name] = _convolution(always_transposed=True)
    for name in ("_scaled_dot_product_flash_attention", "_scaled_dot_product_flash_attention_for_cpu",
                 "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention",
                 "_scaled_dot_product_fused_attention_overrideable", "_scaled_dot_product_attention_math_for_mps"):
        table[name] = _attention_lhe
    table["_flash_attention_forward"] = _attention_lhe_varlen(3, ("cum_seq_q", "cum_seq_k"))
    table["_efficient_attention_forward"] = _attention_lhe_varlen(4, ("cu_seqlens_q", "cu_seqlens_k"))
    table["_native_multi_head_attention"] = _native_multi_head_attention
    table["_transformer_encoder_layer_fwd"] = _transformer_encoder_layer
    table["mkldnn_rnn_layer"] = _recurrent(None)
    table["_cudnn_rnn"] = _recurrent(1)
    table["miopen_rnn"] = _recurrent(1)
    # ops an older (or CPU-only) build of torch does not have are simply never met
    return {getattr(aten, name): rule for name, rule in table.items() if hasattr(aten, name)}


_RULES = _build_rules()


class _CountingError(RuntimeError):
    """A counting rule failed on an op's arguments: a bug here, not in the user's model."""


class _MacCounter(TorchDispatchMode):
    """Adds up the MACs of every op it sees, and, per module, of the ops run while that module was running."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0
        self.running: list[nn.Module] = []
        self.per_module: dict[nn.Module, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        rule = _RULES.get(func.overloadpacket)
        if rule is not None:
            try:
                macs = int(rule(args, kwargs, out))
            except Exception as exc:  # re-raised with the op named: a rule that cannot read its op is our bug
                raise _CountingError(
                    f"pruneframe cannot count the MACs of {func}: {type(exc).__name__}: {exc}. "
                    "Please report it, with the shapes of the op's arguments."
                ) from exc
            self.total += macs
            for module in dict.fromkeys(self.running):  # a module that calls itself counts once
                self.per_module[module] = self.per_module.get(module, 0) + macs
        return out

    def enter(self, module: nn.Module, args: tuple) -> None:
        self.running.append(module)

    def leave(self, module: nn.Module, args: tuple, output: Any) -> None:
        self.running.pop()


def count_ops_and_params(
    model: nn.Module,
    example_inputs: Any,
    layer_wise: bool = False,
    forward_fn: Callable[[nn.Module, Any], Any] | None = None,
) -> tuple[int, int] | tuple[int, int, dict[nn.Module, int], dict[nn.Module, int]]:
    """Count the multiply-accumulates of one forward pass of ``model`` and its parameters.

    ``example_inputs`` is a tensor, a tuple or list of positional inputs, or a
    dict of keyword inputs (``forward_fn(model, example_inputs)`` runs anything
    else). The pass runs in eval mode under ``torch.no_grad()``, as Torch-Pruning
    counts, and the count is for the whole batch given.

    Returns ``(macs, params)``. With ``layer_wise=True``, as in Torch-Pruning,
    also ``layer_macs`` and ``layer_params``: dicts from each module of the model
    to the MACs of the ops run while it ran (its submodules' included, so the
    model itself maps to the total) and to its parameter count.

    MACs are counted for matrix products, convolutions and attention, not for
    biases, normalisation, activations or pooling. Parameters shared by several
    modules (tied weights) are counted once.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"count_ops_and_params needs a torch.nn.Module as model, got {type(model).__name__}. "
            "Pass the model itself (not its state_dict or its output)."
        )
    if forward_fn is not None and not callable(forward_fn):
        raise TypeError(f"forward_fn must be a callable forward_fn(model, example_inputs), got {type(forward_fn).__name__}")
    lazy = [name for name, p in model.named_parameters() if isinstance(p, nn.parameter.UninitializedParameter)]
    if lazy:
        raise ValueError(
            f"the model has lazy parameters that are not initialised yet ({', '.join(lazy[:3])}): "
            "run it once on real inputs before counting, so their sizes are known."
        )

    model = unwrap(model)  # count the module a torch.compile / DataParallel wrapper holds
    forward = forward_fn or default_forward
    counter = None
    try:
        counter = _count(model, example_inputs, forward, layer_wise, shapes_only=True)
    except Exception as exc:  # fake tensors cannot run every model (values needed, an op without a fake kernel,
        # data-dependent shapes): count on the real inputs instead, which gives the same count, only slower
        logger.debug("shapes-only count failed (%s: %s); counting with real tensors", type(exc).__name__, exc)
    if counter is None:
        try:
            counter = _count(model, example_inputs, forward, layer_wise, shapes_only=False)
        except _CountingError:
            raise
        except Exception as exc:  # whatever the model's own code raises is why it cannot be counted
            raise ValueError(
                f"count_ops_and_params could not run {type(model).__name__} on example_inputs={describe_inputs(example_inputs)}: "
                f"{type(exc).__name__}: {exc}. {inputs_hint(example_inputs)}"
            ) from exc

    params = sum(p.numel() for p in model.parameters())  # parameters() yields a shared Parameter once
    if not layer_wise:
        return counter.total, params
    layer_macs = {m: counter.per_module.get(m, 0) for m in model.modules()}
    layer_params = {m: sum(p.numel() for p in m.parameters()) for m in model.modules()}
    return counter.total, params, layer_macs, layer_params


def _count(model: nn.Module, example_inputs: Any, forward: Callable[[nn.Module, Any], Any], layer_wise: bool,
           shapes_only: bool) -> _MacCounter:
    """One forward pass under the counter, in eval mode, on fake tensors (shapes only) or on the real ones."""
    counter = _MacCounter()
    with contextlib.ExitStack() as stack:
        run = stack.enter_context(model_run(model, example_inputs, shapes_only, eval_mode=True))
        if layer_wise:
            for module in model.modules():
                stack.enter_context(module.register_forward_pre_hook(counter.enter))
                stack.enter_context(module.register_forward_hook(counter.leave, always_call=True))
        stack.enter_context(counter)
        forward(model, run.inputs)
    return counter


def count_params(module: nn.Module) -> int:
    """The number of parameters of ``module``; a parameter shared by several submodules (tied weights) counts once."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"count_params needs a torch.nn.Module, got {type(module).__name__}")
    return sum(p.numel() for p in unwrap(module).parameters())
