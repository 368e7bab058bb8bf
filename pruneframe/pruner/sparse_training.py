"""Pruners for sparse training: a penalty pushes prunable channels toward zero before they are pruned.

Call ``pruner.regularize(model)`` after ``loss.backward()`` and before
``optimizer.step()``: it adds the penalty's gradient to the parameters'
``.grad``. After a ``step()`` (or any change to the groups) call
``update_regularizer()`` so the penalty follows the pruned model.

- ``BNScalePruner``: L1 on batch-norm scales (network slimming); with
  ``group_lasso=True`` the scales of one channel across every batch norm of a
  group share one L2 penalty.
- ``GroupNormPruner``: a group lasso over every weight a channel owns in its
  group (all member layers); weaker channels are pushed harder, by up to a
  factor ``alpha`` for the weakest of a group.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..graph import Group, Member
from ..importance import LayerChannels, read_channels
from .meta_pruner import MetaPruner

_NORMS = (nn.modules.batchnorm._BatchNorm,)


class RegularizedPruner(MetaPruner):
    """Shared plumbing: the groups the penalty covers, refreshed by ``update_regularizer``."""

    def __init__(self, *args: Any, reg: float = 1e-5, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if not isinstance(reg, (int, float)) or reg < 0:
            raise ValueError(f"reg={reg!r}: it must be a number >= 0")
        self.reg = float(reg)
        self.update_regularizer()

    def update_regularizer(self) -> None:
        self._groups = list(self._all_groups())

    def _parts(self, group: Group) -> list[tuple[LayerChannels, Member]]:
        """Each readable member of ``group``: how to read its channels, and the root index of each of them."""
        parts = []
        for member in group.members():
            channels = read_channels(member)
            if channels is not None and isinstance(channels.weight, nn.Parameter):
                parts.append((channels, member))
        return parts


def add_penalty_grad(penalty: torch.Tensor, params: list[nn.Parameter]) -> None:
    """Add the gradient of ``penalty`` to each parameter's ``.grad`` (setting it where there is none yet)."""
    grads = torch.autograd.grad(penalty, params, allow_unused=True)
    for p, g in zip(params, grads):
        if g is None:
            continue
        p.grad = g.detach().clone() if p.grad is None else p.grad + g.detach()


class BNScalePruner(RegularizedPruner):
    """Network slimming: L1 (or, with ``group_lasso``, group-L2) on batch-norm scales, then MetaPruner's pruning."""

    def __init__(self, *args: Any, reg: float = 1e-5, group_lasso: bool = False, **kwargs: Any):
        self.group_lasso = group_lasso
        super().__init__(*args, reg=reg, **kwargs)

    def regularize(self, model: nn.Module, reg: float | None = None, bias: bool = False) -> None:
        reg = self.reg if reg is None else reg
        for group in self._groups:
            norms = [(channels, member) for channels, member in self._parts(group) if isinstance(channels.layer, _NORMS)]
            if not norms:
                continue
            if not self.group_lasso:
                for channels, _ in norms:
                    gamma = channels.layer.weight
                    with torch.no_grad():
                        push = torch.zeros_like(gamma)
                        push[channels.idxs] = reg * torch.sign(gamma[channels.idxs])
                    gamma.grad = push if gamma.grad is None else gamma.grad + push
                continue
            n = len(group.root_idxs)
            params = [channels.layer.weight for channels, _ in norms]
            squares = torch.zeros(n, dtype=torch.float32)
            for channels, member in norms:
                rows = channels.rows_live(channels.layer.weight).float().pow(2).sum(1)
                squares = squares + member.to_roots(rows)
            add_penalty_grad(reg * squares.clamp_min(1e-12).sqrt().sum(), params)


class GroupNormPruner(RegularizedPruner):
    """Group lasso over every weight of a channel's group, weaker channels pushed up to ``alpha`` times harder."""

    def __init__(self, *args: Any, reg: float = 1e-4, alpha: float = 4.0, **kwargs: Any):
        if not isinstance(alpha, (int, float)) or alpha < 1:
            raise ValueError(f"alpha={alpha!r}: it must be a number >= 1")
        self.alpha = float(alpha)
        super().__init__(*args, reg=reg, **kwargs)

    def regularize(self, model: nn.Module, alpha: float | None = None, bias: bool = False) -> None:
        alpha = self.alpha if alpha is None else float(alpha)
        for group in self._groups:
            parts = self._parts(group)
            if not parts:
                continue
            n = len(group.root_idxs)
            squares = torch.zeros(n, dtype=torch.float32)
            params: list[nn.Parameter] = []
            for channels, member in parts:
                rows = channels.rows_live(channels.weight).float().pow(2).sum(1)
                if bias and channels.bias is not None:
                    rows = rows + channels.bias[channels.idxs].float().pow(2)
                    params.append(channels.bias)
                squares = squares + member.to_roots(rows)
                params.append(channels.weight)
            norms = squares.clamp_min(1e-12).sqrt()
            with torch.no_grad():  # the weakest channel of the group gets alpha times the push of the strongest
                spread = norms.max() - norms.min()
                scale = alpha ** ((norms.max() - norms) / spread) if float(spread) > 0 else torch.ones_like(norms)
            unique = list({id(p): p for p in params}.values())
            add_penalty_grad(self.reg * (scale * norms).sum(), unique)
