"""``MetaPruner.calibrate``: run calibration batches through the model to feed a data-driven importance criterion.

- ``ActivationImportance``: forward passes in eval mode under ``no_grad``,
  with hooks on the graph's layers adding per-channel statistics.
- ``TaylorImportance``: ``loss_fn(model, batch).backward()`` per batch, so
  each parameter's ``.grad`` ends up the sum of the batches' gradients (any
  earlier ``.grad`` is replaced: that is the statistic Taylor reads).
- ``HessianImportance``: the squared gradient of every sample (``loss_fn``
  returning one loss per sample; a single loss counts the batch as one
  sample) is accumulated in the criterion; ``.grad`` is left as it was.

The model runs in eval mode (dropout off, batch-norm statistics untouched)
and is left as it was otherwise (training flags, buffers, RNG, grad mode;
``pruneframe.runtime.model_run``). Inside a ``torch.distributed`` process
group the statistics are summed over the ranks at the end, so every rank
computes the same plan.
"""
from __future__ import annotations

import itertools
from typing import Any, Callable, Iterable

import torch
from torch import nn

from ..importance import ActivationImportance, HessianImportance, TaylorImportance
from ..importance.distributed import in_process_group, sum_over_ranks
from ..progress import bar
from ..runtime import Forward, default_forward, model_run

LossFn = Callable[[nn.Module, Any], torch.Tensor]
_NOTHING = object()


def calibrate(pruner: Any, batches: Iterable[Any], forward_fn: Forward | None = None, loss_fn: LossFn | None = None,
              progress: bool | None = None) -> int:
    """Feed ``pruner.importance`` with ``batches``; returns how many batches ran. See the module docstring."""
    importance = pruner.importance
    name = type(importance).__name__
    wants_gradients = isinstance(importance, (TaylorImportance, HessianImportance))
    if not isinstance(importance, ActivationImportance) and not wants_gradients:
        raise TypeError(f"calibrate: {name} needs no data (it reads the weights); calibration feeds ActivationImportance, "
                        "TaylorImportance or HessianImportance (the last two with loss_fn=)")
    if wants_gradients and loss_fn is None:
        raise ValueError(f"calibrate: {name} needs gradients; pass loss_fn=lambda model, batch: ... returning the loss "
                         "to differentiate (one per sample for HessianImportance)")
    if not wants_gradients and loss_fn is not None:
        raise ValueError(f"calibrate: loss_fn is for gradient criteria (Taylor, Hessian); {name} reads activations, "
                         "drop loss_fn (and use forward_fn=... if the model needs a special call)")
    if isinstance(batches, (torch.Tensor, dict)) or not isinstance(batches, Iterable):
        raise TypeError(f"calibrate takes an iterable of batches (a list, a DataLoader), not a {type(batches).__name__}: "
                        "for one batch x, pass [x]")
    total = _length(batches)
    iterator = iter(batches)
    first = next(iterator, _NOTHING)
    if first is _NOTHING:
        raise ValueError("calibrate got no batches: pass a non-empty list or DataLoader of calibration batches")
    forward = forward_fn or pruner.forward_fn or default_forward
    model = pruner.model
    shown = pruner.progress if progress is None else progress
    everything = itertools.chain([first], iterator)
    with bar("calibrating", total=total, enabled=shown, unit="batch") as progress_bar:
        if isinstance(importance, ActivationImportance):
            return _activations(pruner, model, everything, forward, progress_bar)
        if isinstance(importance, TaylorImportance):
            return _taylor(model, everything, loss_fn, progress_bar)
        return _hessian(importance, model, everything, loss_fn, progress_bar)



def _length(batches: Iterable[Any]) -> int | None:
    """How many batches there are, for the bar; None when unknown (a generator, a loader over an iterable dataset)."""
    try:
        return len(batches)  # type: ignore[arg-type]
    except TypeError:
        return None


def _activations(pruner: Any, model: nn.Module, batches: Iterable[Any], forward: Forward, progress_bar: Any) -> int:
    importance: ActivationImportance = pruner.importance
    names = {id(m): n for n, m in model.named_modules()}
    layers = [(names[id(module)], module, node.pruner) for module, node in pruner.DG.module2node.items()
              if node.kind == "layer" and id(module) in names]
    importance.reset()
    seen = 0
    with model_run(model, None, shapes_only=False, eval_mode=True), importance.collecting(layers):
        for batch in batches:
            forward(model, batch)
            seen += 1
            progress_bar.update()
    return seen


def _scalar_loss(loss: Any) -> torch.Tensor:
    if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
        raise ValueError(f"loss_fn must return a scalar loss tensor for TaylorImportance, got {_describe(loss)}; "
                         "reduce it, e.g. with .mean() or .sum()")
    return loss


def _describe(value: Any) -> str:
    return f"a tensor of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__


def _taylor(model: nn.Module, batches: Iterable[Any], loss_fn: LossFn, progress_bar: Any) -> int:
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.grad = None  # .grad becomes the sum over the calibration batches, nothing else
    seen = 0
    with model_run(model, None, shapes_only=False, eval_mode=True), torch.enable_grad():
        for batch in batches:
            _scalar_loss(loss_fn(model, batch)).backward()
            seen += 1
            progress_bar.update()
    if in_process_group():  # a parameter without a gradient here (an expert no token reached) may have one elsewhere
        sums, _ = sum_over_ranks([p.grad.flatten() if p.grad is not None else None for p in params], [0.0] * len(params),
                                 "TaylorImportance gradients")
        for p, total in zip(params, sums):
            if total is not None:
                p.grad = total.reshape(p.shape).to(p.device, p.dtype)
    return seen


def _hessian(importance: HessianImportance, model: nn.Module, batches: Iterable[Any], loss_fn: LossFn,
             progress_bar: Any) -> int:
    params = list(model.parameters())
    before = [p.grad for p in params]
    importance.zero_grad()
    seen = 0
    try:
        with model_run(model, None, shapes_only=False, eval_mode=True), torch.enable_grad():
            for batch in batches:
                losses = loss_fn(model, batch)
                if not isinstance(losses, torch.Tensor) or losses.dim() > 1:
                    raise ValueError(f"loss_fn must return a loss tensor, one per sample (or a scalar), for HessianImportance, "
                                     f"got {_describe(losses)}")
                samples = losses.reshape(-1)
                for k, loss in enumerate(samples):
                    for p in params:
                        p.grad = None
                    loss.backward(retain_graph=k < samples.numel() - 1)
                    importance.accumulate_grad(model)
                seen += 1
                progress_bar.update()
    finally:
        for p, grad in zip(params, before):
            p.grad = grad
    importance.sum_over_ranks(model)
    return seen
