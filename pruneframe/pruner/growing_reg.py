"""``GrowingRegPruner``: growing regularisation (Wang et al., "Neural Pruning via Growing Regularization", ICLR 2021).

Every prunable channel carries its own L2 penalty coefficient, starting at
``reg``. ``regularize(model)`` (after ``loss.backward()``, before
``optimizer.step()``) adds ``gamma * w`` to the gradient of every weight the
channel owns in its group -- the gradient of ``gamma / 2 * w ** 2`` -- in each
member layer that holds it (weight rows, weight columns, norm scales).
``update_reg()`` grows the coefficients: a group's channels, ranked by the
importance criterion, gain ``delta_reg * (max - s) / (max - min)``, so the
least important channel of a group gains ``delta_reg`` and the most important
nothing. ``update_regularizer()`` (after a ``step()``) takes the groups of the
pruned model and starts every coefficient at ``reg`` again.

Example::

    pruner = tp.pruner.GrowingRegPruner(model, example_inputs, tp.importance.GroupMagnitudeImportance(p=2),
                                        reg=1e-5, delta_reg=1e-5, pruning_ratio=0.5)
    for batch in loader:
        loss = criterion(model(batch.x), batch.y)
        loss.backward()
        pruner.regularize(model)
        optimizer.step(); optimizer.zero_grad()
    pruner.update_reg()        # every few iterations
    pruner.step()              # then prune
    pruner.update_regularizer()
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from ..graph import Group
from ..importance import UnscorableGroupError
from .sparse_training import add_penalty_grad, RegularizedPruner


class GrowingRegPruner(RegularizedPruner):
    """MetaPruner with per-channel L2 penalties that grow fastest for the least important channels."""

    def __init__(self, model: nn.Module, example_inputs: Any, importance: Callable[[Group], torch.Tensor],
                 reg: float = 1e-5, delta_reg: float = 1e-5, **kwargs: Any):
        if not isinstance(delta_reg, (int, float)) or isinstance(delta_reg, bool) or delta_reg < 0:
            raise ValueError(f"delta_reg={delta_reg!r}: it must be a number >= 0")
        self.delta_reg = float(delta_reg)
        super().__init__(model, example_inputs, importance, reg=reg, **kwargs)

    @property
    def base_reg(self) -> float:
        """The coefficient every channel starts with (Torch-Pruning's name for ``reg``)."""
        return self.reg

    def update_regularizer(self) -> None:
        """Take the groups of the model as it is now, each channel's coefficient back at ``reg``."""
        super().update_regularizer()
        self.group_reg: dict[Group, torch.Tensor] = {
            group: torch.full((len(group.root_idxs),), self.reg, dtype=torch.float32) for group in self._groups
        }

    def update_reg(self) -> None:
        """Grow every group's coefficients by ``delta_reg``, scaled from 1 (least important channel) to 0 (most)."""
        for group in self._groups:
            try:
                scores = self.estimate_importance(group)
            except UnscorableGroupError:  # nothing the criterion reads: the penalty of this group stays as it is
                continue
            if scores is None:
                continue
            scores = torch.as_tensor(scores, dtype=torch.float32).detach().flatten().cpu()
            if scores.numel() != len(group.root_idxs):
                raise ValueError(f"the importance gave {scores.numel()} scores for a group of {len(group.root_idxs)} "
                                 "root indices; it must give one per root index")
            spread = scores.max() - scores.min()
            weakness = (scores.max() - scores) / spread if float(spread) > 0 else torch.zeros_like(scores)
            self.group_reg[group] = self.group_reg[group] + self.delta_reg * weakness

    def regularize(self, model: nn.Module, bias: bool = False) -> None:
        """Add each channel's ``gamma * w`` (and ``gamma * b`` with ``bias``) to the gradients, in every member layer."""
        for group in self._groups:
            gamma = self.group_reg[group]
            params: list[nn.Parameter] = []
            terms: list[torch.Tensor] = []
            for channels, member in self._parts(group):
                # a channel removed by several root indices (rare) takes the mean of their coefficients
                coef = member.from_roots(gamma, mean=True)
                weight = channels.weight
                coef = coef.to(device=weight.device, dtype=weight.dtype)
                terms.append((coef[:, None] * channels.rows_live(weight).pow(2)).sum())
                params.append(weight)
                if bias and channels.bias is not None and isinstance(channels.bias, nn.Parameter):
                    b = channels.bias
                    terms.append((coef.to(b.dtype) * b[channels.idxs.to(b.device)].pow(2)).sum())
                    params.append(b)
            if terms:
                unique = list({id(p): p for p in params}.values())
                add_penalty_grad(0.5 * torch.stack([t.float() for t in terms]).sum(), unique)


__all__ = ["GrowingRegPruner"]
