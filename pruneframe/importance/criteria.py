"""The importance criteria: magnitude, BN scale, LAMP, FPGM, Taylor, Hessian, random."""
from __future__ import annotations

import abc
import functools
from typing import Iterable

import torch
from torch import nn

from ..graph import Group, Member
from ..layer_pruner import counts_as
from ..runtime import single_threaded
from .channels import LayerChannels, read_channels
from .distributed import sum_over_ranks
from .reductions import Normalizer, check_options, normalize, reduce_scores

DEFAULT_TARGET_TYPES: tuple[type, ...] = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._BatchNorm, nn.LayerNorm)


class UnscorableGroupError(ValueError):
    """A criterion cannot score a group: no member layer it reads, or scores that are not finite.

    A pruner may catch it to leave such a group alone.
    """


class NothingToReadError(UnscorableGroupError):
    """The criterion reads none of the group's layers (e.g. BN scales in a group without batch norm)."""


class Importance(abc.ABC):
    """Base class of importance criteria: ``imp(group)`` returns one score per entry of ``group.root_idxs``."""

    @abc.abstractmethod
    def __call__(self, group: Group) -> torch.Tensor:
        raise NotImplementedError


def _root_name(group: Group) -> str:
    root = group.root
    return f"{root.name} ({root.type})"


class PerLayerImportance(Importance):
    """A criterion built from per-layer scores: subclass it and implement ``layer_scores``.

    ``layer_scores(channels)`` scores the channels ``channels.idxs`` of one
    member layer (a ``LayerChannels``), or returns None to skip the layer. Only
    layers that are instances of ``target_types`` (or whose layer pruner
    ``acts_like`` one of them) and whose weight pruneframe
    can read (convolutions, the tables of declarative layer pruners, raw
    parameters) are asked. The scores are then carried to the root indices,
    reduced with ``group_reduction`` and normalised with ``normalizer``.

    ``group_reduction`` combines, per root index, the scores of the member
    layers that hold one of its channels: "mean" (their average), "sum", "max",
    "prod" (product), "first" (the first such member in group order, i.e. the
    root layer when the criterion reads it) or "gate" (the last such member).
    ``group_reduction=None`` reduces nothing: the result is a 2-D tensor, one
    row per member layer read (zeros where a layer holds no channel of a root
    index), for analysis -- a pruner needs one score per root index and refuses
    it. ``normalizer`` rescales the
    reduced scores ``s`` of the group: "mean" ``s / mean(s)``, "max"
    ``s / max(s)``, "sum" ``s / sum(s)`` (all three leave all-zero scores
    unchanged), "standarization" (also spelt "standardization";
    min-max scaling as in Torch-Pruning: ``(s - min) / (max - min)``, zeros if
    all are equal), "gaussian" ``(s - mean) / std`` (unbiased std; centred only
    if it is 0), "lamp" (see ``LAMPImportance``), "sentinel_<q>" (``s``
    divided by its value at quantile ``q``, the ``int(q * n)``-th smallest:
    "sentinel_0.5" is the median; unchanged if that is 0), None (unchanged) or
    a function ``tensor -> tensor``. Rows of ``group_reduction=None`` are
    normalised together, as one tensor.

    Raises ``UnscorableGroupError`` when no member layer is read, when some
    root index has no channel in a layer that is read, or when a score is NaN
    or infinite.
    """

    def __init__(self, group_reduction: str | None = "mean", normalizer: Normalizer = "mean",
                 target_types: Iterable[type] = DEFAULT_TARGET_TYPES):
        check_options(group_reduction, normalizer)
        self.group_reduction = group_reduction
        self.normalizer = normalizer
        self.target_types = tuple(target_types)

    @abc.abstractmethod
    def layer_scores(self, channels: LayerChannels) -> torch.Tensor | None:
        """One score per channel of ``channels.idxs``, or None to leave the layer out."""

    def member_scores(self, member: Member) -> tuple[torch.Tensor, str] | None:
        """One score per channel of ``member.idxs`` and the layer's name for messages, or None to leave it out.

        By default the member's weights are read (``read_channels``) and passed to ``layer_scores``; a criterion
        that reads something other than weights (activations) overrides this instead.
        """
        channels = read_channels(member)
        if channels is None:
            return None
        local = self.layer_scores(channels)
        return None if local is None else (local, channels.name)

    @torch.no_grad()
    def __call__(self, group: Group) -> torch.Tensor:
        n = len(group.root_idxs)
        if not len(group) or n == 0:
            return torch.empty(0)
        rows: list[torch.Tensor] = []
        covers: list[torch.Tensor] = []
        with single_threaded():  # many tiny index ops: a thread pool costs more than it saves
            members = group.members()
        for member in members:
            if not counts_as(member.node.module, member.node.pruner, self.target_types):
                continue
            found = self.member_scores(member)
            if found is None:
                continue
            local, name = found
            local = local.detach().to(torch.promote_types(local.dtype, torch.float32))
            if local.shape != (len(member.idxs),):
                raise ValueError(
                    f"{type(self).__name__}.layer_scores gave shape {tuple(local.shape)} for {name}; "
                    f"expected ({len(member.idxs)},), one score per channel"
                )
            if not bool(torch.isfinite(local).all()):
                raise UnscorableGroupError(
                    f"{type(self).__name__} got NaN or infinite scores from {name} in the group of "
                    f"{_root_name(group)}: its weights (or gradients) are not finite"
                )
            device = rows[0].device if rows else local.device
            local = local.to(device)
            row = member.to_roots(local)
            covered = member.covered_roots().to(device)
            rows.append(row)
            covers.append(covered)
        if not rows:
            raise NothingToReadError(
                f"{type(self).__name__} reads none of the layers in the group of {_root_name(group)} "
                f"(it reads {', '.join(t.__name__ for t in self.target_types)}, with weights); "
                "skip this group, or choose target_types that include one of its layers"
            )
        dtype = functools.reduce(torch.promote_types, (r.dtype for r in rows))
        scores = torch.stack([r.to(dtype) for r in rows])
        covered = torch.stack(covers)
        missing = ~covered.any(0)
        if bool(missing.any()):
            raise NothingToReadError(
                f"{type(self).__name__} reads no layer holding root indices "
                f"{[group.root_idxs[i] for i in missing.nonzero().flatten().tolist()]} of the group of {_root_name(group)}"
            )
        result = normalize(reduce_scores(scores, covered, self.group_reduction), self.normalizer)
        if not bool(torch.isfinite(result).all()):
            raise UnscorableGroupError(
                f"{type(self).__name__} produced NaN or infinite scores for the group of {_root_name(group)} "
                f"after group_reduction={self.group_reduction!r} and normalizer={self.normalizer!r}"
            )
        return result


class MagnitudeImportance(PerLayerImportance):
    """Magnitude: per layer, the sum of ``|w| ** p`` over the weights of each channel.

    A channel's weights are its weight row (output channels of a Linear or
    conv), its weight column (input channels; for a grouped conv only the
    rows of its group), or its entry of a norm layer's scale. With
    ``bias=True`` the channel's ``|b| ** p`` is added. (No ``1 / p`` root is
    taken: with ``p=2`` this is the squared L2 norm, as in Torch-Pruning.)
    """

    def __init__(self, p: float = 2, group_reduction: str | None = "mean", normalizer: Normalizer = "mean", bias: bool = False,
                 target_types: Iterable[type] = DEFAULT_TARGET_TYPES):
        super().__init__(group_reduction, normalizer, target_types)
        if isinstance(p, bool) or not isinstance(p, (int, float)):
            raise TypeError(f"p={p!r}: the norm's exponent must be a positive number, e.g. 1 or 2")
        if not p > 0:
            raise ValueError(f"p={p!r}: the norm's exponent must be a positive number, e.g. 1 or 2")
        self.p = p
        self.bias = bias

    def layer_scores(self, channels: LayerChannels) -> torch.Tensor:
        score = self._power(channels.rows()).sum(1)
        b = channels.bias_entries() if self.bias else None
        return score + self._power(b) if b is not None else score

    def _power(self, t: torch.Tensor) -> torch.Tensor:
        return t.square() if self.p == 2 else t.abs() if self.p == 1 else t.abs().pow(self.p)


GroupMagnitudeImportance = MagnitudeImportance
GroupNormImportance = MagnitudeImportance


class BNScaleImportance(MagnitudeImportance):
    """Network slimming: ``|gamma|`` of the batch-norm layers in the group."""

    def __init__(self, group_reduction: str | None = "mean", normalizer: Normalizer = "mean"):
        super().__init__(p=1, group_reduction=group_reduction, normalizer=normalizer, bias=False,
                         target_types=(nn.modules.batchnorm._BatchNorm,))


class LAMPImportance(MagnitudeImportance):
    """LAMP: magnitude (``p=2``: squared weights), normalised by ``s_i / sum(s_j for s_j >= s_i)`` over the group."""

    def __init__(self, p: float = 2, group_reduction: str | None = "mean", normalizer: Normalizer = "lamp", bias: bool = False,
                 target_types: Iterable[type] = DEFAULT_TARGET_TYPES):
        if normalizer != "lamp":
            raise ValueError(f"LAMPImportance normalises with 'lamp', got normalizer={normalizer!r}; "
                             "use MagnitudeImportance for other normalizers")
        super().__init__(p, group_reduction, normalizer, bias, target_types)


class FPGMImportance(PerLayerImportance):
    """Filter pruning via geometric median: per layer, a channel's summed distance to the layer's other channels.

    A channel's weights (as ``MagnitudeImportance`` reads them, plus its bias
    with ``bias=True``) form a vector; its score is the sum of the ``p``-norm
    distances to the vectors of *every* channel of that layer (not only the
    group's), so channels close to the layer's geometric median score low.
    Reads convolutions and Linear layers by default.
    """

    def __init__(self, p: float = 2, group_reduction: str | None = "mean", normalizer: Normalizer = "mean", bias: bool = False,
                 target_types: Iterable[type] = (nn.modules.conv._ConvNd, nn.Linear)):
        super().__init__(group_reduction, normalizer, target_types)
        self.p = p
        self.bias = bias

    def _vectors(self, channels: LayerChannels, idxs: torch.Tensor) -> torch.Tensor:
        rows = channels.rows(idxs=idxs)
        b = channels.bias_entries(idxs=idxs) if self.bias else None
        return torch.cat([rows, b.unsqueeze(1)], 1) if b is not None else rows

    def layer_scores(self, channels: LayerChannels) -> torch.Tensor:
        everyone = self._vectors(channels, channels.all_idxs())
        mine = self._vectors(channels, channels.idxs)
        # in chunks: a full n x n distance matrix of a wide layer would not fit in memory
        return torch.cat([torch.cdist(chunk, everyone, p=self.p).sum(1) for chunk in torch.split(mine, 1024)])


class TaylorImportance(PerLayerImportance):
    """First-order Taylor: per layer, ``sum |w * dL/dw|`` over each channel's weights, from the gradients in ``.grad``.

    With ``multivariable=True`` the sum is taken before the absolute value
    (``|sum w * dL/dw|``); with ``bias=True`` the channel's ``|b * dL/db|`` is
    added. Call ``loss.backward()`` first; a read layer without a gradient is
    an error naming it.
    """

    def __init__(self, group_reduction: str | None = "mean", normalizer: Normalizer = "mean", multivariable: bool = False,
                 bias: bool = False, target_types: Iterable[type] = DEFAULT_TARGET_TYPES):
        super().__init__(group_reduction, normalizer, target_types)
        self.multivariable = multivariable
        self.bias = bias

    @staticmethod
    def _grad(tensor: torch.Tensor, channels: LayerChannels, what: str) -> torch.Tensor:
        if tensor.grad is None:
            raise ValueError(
                f"TaylorImportance needs gradients, but the {what} of {channels.name} has no .grad: "
                "compute a loss and call loss.backward() before scoring (and do not zero the gradients in between)"
            )
        return tensor.grad

    def layer_scores(self, channels: LayerChannels) -> torch.Tensor:
        product = channels.rows() * channels.rows(self._grad(channels.weight, channels, "weight"))
        score = product.sum(1).abs() if self.multivariable else product.abs().sum(1)
        if self.bias and channels.bias is not None:
            db = channels.bias_entries(self._grad(channels.bias, channels, "bias"))
            score = score + (channels.bias_entries() * db).abs()
        return score


GroupTaylorImportance = TaylorImportance


class HessianImportance(PerLayerImportance):
    """Optimal Brain Damage with the diagonal empirical Fisher as the Hessian.

    For every weight ``w`` of a channel, ``H_ww`` is approximated by the mean
    over samples of the squared per-sample gradient, ``mean_n (dL_n/dw)**2``,
    and the channel's score is ``0.5 * sum(H_ww * w**2)`` (plus the same for
    its bias with ``bias=True``): the loss increase OBD predicts for removing
    it. Gather the gradients first::

        imp = HessianImportance()
        imp.zero_grad()
        for loss in per_sample_losses:
            model.zero_grad()
            loss.backward(retain_graph=True)
            imp.accumulate_grad(model)

    The accumulated values belong to the weights' current shapes: after a
    prune, call ``zero_grad()`` and accumulate again.
    """

    def __init__(self, group_reduction: str | None = "mean", normalizer: Normalizer = "mean", bias: bool = False,
                 target_types: Iterable[type] = DEFAULT_TARGET_TYPES):
        super().__init__(group_reduction, normalizer, target_types)
        self.bias = bias
        self._squares: dict[int, tuple[torch.Tensor, torch.Tensor, int]] = {}

    def zero_grad(self) -> None:
        """Forget every accumulated gradient."""
        self._squares = {}

    @torch.no_grad()
    def accumulate_grad(self, model: nn.Module) -> None:
        """Add the square of every parameter's current ``.grad`` (one sample's gradient) to the running sums."""
        for param in model.parameters():
            if param.grad is None:
                continue
            found = self._squares.get(id(param))
            square = param.grad.detach().pow(2)
            if found is None or found[1].shape != square.shape:
                self._squares[id(param)] = (param, square.clone(), 1)
            else:
                self._squares[id(param)] = (param, found[1] + square, found[2] + 1)

    def sum_over_ranks(self, model: nn.Module) -> None:
        """Inside a ``torch.distributed`` process group: add up every rank's accumulated squares and counts.

        ``pruner.calibrate`` calls it; call it yourself once, on every rank, after accumulating by hand.
        """
        params = list(model.parameters())
        found = [self._squares.get(id(p)) for p in params]
        sums, counts = sum_over_ranks([f[1] if f else None for f in found], [float(f[2]) if f else 0.0 for f in found],
                                      "HessianImportance")
        for param, total, count in zip(params, sums, counts):
            if total is not None:
                self._squares[id(param)] = (param, total.reshape(param.shape).to(param.device, param.dtype), int(count))

    def _curvature(self, tensor: torch.Tensor, channels: LayerChannels, what: str) -> torch.Tensor:
        found = self._squares.get(id(tensor))
        if found is None:
            raise ValueError(
                f"HessianImportance has no accumulated gradients for the {what} of {channels.name}: after each "
                "per-sample loss.backward(), call accumulate_grad(model)"
            )
        param, total, count = found
        if total.shape != tensor.shape:
            raise ValueError(
                f"the gradients accumulated for the {what} of {channels.name} have shape {tuple(total.shape)}, but it "
                f"now has shape {tuple(tensor.shape)} (it was pruned): call zero_grad() and accumulate again"
            )
        return total / count

    def layer_scores(self, channels: LayerChannels) -> torch.Tensor:
        h = channels.rows(self._curvature(channels.weight, channels, "weight"))
        score = 0.5 * (channels.rows().pow(2) * h).sum(1)
        if self.bias and channels.bias is not None:
            hb = channels.bias_entries(self._curvature(channels.bias, channels, "bias"))
            score = score + 0.5 * channels.bias_entries().pow(2) * hb
        return score


GroupHessianImportance = HessianImportance


class RandomImportance(Importance):
    """Uniform random scores in [0, 1), one per root index; pass a ``torch.Generator`` to repeat them."""

    def __init__(self, generator: torch.Generator | None = None):
        self.generator = generator

    def __call__(self, group: Group) -> torch.Tensor:
        return torch.rand(len(group.root_idxs), generator=self.generator)
