"""Importance criteria: how much each channel of a pruning group matters.

A criterion is called on a ``Group`` and returns a 1-D tensor with one score
per root index of the group (``group.root_idxs``, in that order); a pruner
removes the lowest scores first. For the groups ``get_all_groups`` yields,
``group.root_idxs`` is the same list as ``group[0].idxs``.

Channels tied together in a group are scored together: each member layer the
criterion reads scores the channels it loses, every score is carried back to
the root index whose prune removes that channel (a root index that removes
several channels of one layer, as through a ``flatten``, gets their sum), and
the members' scores are reduced per root index (``group_reduction``), then
normalised over the group (``normalizer``). Root indices the graph ties to each
other (a grouped convolution's positions) remove the same channels, so they get
the same score.

Example::

    import torch
    from torch import nn
    import pruneframe as tp

    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    DG = tp.DependencyGraph().build_dependency(model, example_inputs=torch.randn(1, 3))
    group = DG.get_pruning_group(model[0], tp.prune_linear_out_channels, idxs=[0, 1, 2, 3])
    scores = tp.importance.MagnitudeImportance(p=1)(group)  # 4 scores, for root indices 0..3

Criteria are also registered by name through the ``pruneframe_importances``
plugin hook: ``pruneframe.importance.from_name("l1")``.
"""
from __future__ import annotations

import abc
import functools
from typing import Any, Callable, Iterable, Iterator, Union

import torch
from torch import nn

from .group import Group
from .layer_pruner import DeclarativeLayerPruner, counts_as
from .node import Node, Space
from .registry import UnknownImportanceError, get_registry
from .tracer import single_threaded

__all__ = [
    "BNScaleImportance",
    "FPGMImportance",
    "GroupHessianImportance",
    "GroupMagnitudeImportance",
    "GroupNormImportance",
    "GroupTaylorImportance",
    "HessianImportance",
    "Importance",
    "LAMPImportance",
    "LayerChannels",
    "MagnitudeImportance",
    "NothingToReadError",
    "PerLayerImportance",
    "RandomImportance",
    "TaylorImportance",
    "UnknownImportanceError",
    "UnscorableGroupError",
    "from_name",
]

GROUP_REDUCTIONS = ("mean", "sum", "max", "prod", "first")
NORMALIZERS = ("mean", "max", "sum", "standarization", "standardization", "gaussian", "lamp")
DEFAULT_TARGET_TYPES: tuple[type, ...] = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._BatchNorm, nn.LayerNorm)

Normalizer = Union[str, Callable[[torch.Tensor], torch.Tensor], None]


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


def from_name(name: str, **kwargs: Any) -> Importance:
    """The criterion a plugin registered as ``name`` (``"l1"``, ``"taylor"``, ...), built with ``kwargs``."""
    entry = get_registry().importance_entry(name)
    criterion = entry.factory(**kwargs)
    if not callable(criterion):
        raise TypeError(
            f"importance {name!r} of plugin {entry.plugin!r} built {criterion!r}, which is not callable; "
            "its factory must return an Importance"
        )
    return criterion


# --- reading one member layer ------------------------------------------------------------


def _along(dim: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Rows of a tensor whose channels are one dimension: channel c is everything at index c of ``dim``."""

    def rows(tensor: torch.Tensor, idxs: torch.Tensor) -> torch.Tensor:
        return tensor.movedim(dim, 0)[idxs].reshape(len(idxs), -1)

    return rows


def _grouped_columns(groups: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Rows of a (grouped) convolution weight whose channels run along dim 1, ``groups`` times.

    A weight of shape ``(A, B, *k)`` split into ``groups`` blocks along dim 0
    holds ``groups * B`` channels: channel c is column ``c % B`` of block
    ``c // B`` (a conv's input channels; a transposed conv's output channels).
    """

    def rows(tensor: torch.Tensor, idxs: torch.Tensor) -> torch.Tensor:
        if groups == 1:
            return tensor.index_select(1, idxs).movedim(1, 0).reshape(len(idxs), -1)
        width = tensor.shape[1]
        blocks = tensor.reshape(groups, tensor.shape[0] // groups, width, -1)
        return blocks[idxs // width, :, idxs % width].reshape(len(idxs), -1)

    return rows


def _at_least_float32(t: torch.Tensor) -> torch.Tensor:
    """Half-precision weights are scored in float32: sums of many small powers underflow otherwise."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


class LayerChannels:
    """The channels one member layer of a group loses, and where they sit in its weight and bias.

    ``idxs`` are the layer's current channel indices (``kind`` "out" or "in").
    ``rows(tensor)`` gives, for each of them, the entries of ``tensor`` (the
    weight, or anything shaped like it: its ``.grad``, an accumulated curvature)
    that belong to that channel, as a ``(len(idxs), k)`` matrix; ``bias_entries``
    the same for the bias (``None`` when the channels have no bias).
    """

    def __init__(self, node: Node, space: Space, idxs: torch.Tensor, weight: torch.Tensor,
                 rows: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], bias: torch.Tensor | None):
        self.node = node
        self.layer = node.module
        self.name = f"{node.name} ({node.type})"
        self.kind = space.kind
        self.idxs = idxs
        self.n_channels = space.current_size
        self.weight = weight
        self.bias = bias
        self._rows = rows

    def all_idxs(self) -> torch.Tensor:
        """Every current channel of the layer along this kind, not only the group's."""
        return torch.arange(self.n_channels)

    def rows(self, tensor: torch.Tensor | None = None, idxs: torch.Tensor | None = None) -> torch.Tensor:
        """Each channel's entries of ``tensor`` (default: the weight), in at least float32."""
        tensor = self.weight if tensor is None else tensor
        idxs = self.idxs if idxs is None else idxs
        return _at_least_float32(self._rows(tensor.detach(), idxs.to(tensor.device)))

    def bias_entries(self, tensor: torch.Tensor | None = None, idxs: torch.Tensor | None = None) -> torch.Tensor | None:
        """Each channel's entry of ``tensor`` (default: the bias), or None when the channels have no bias."""
        if self.bias is None:
            return None
        tensor = self.bias if tensor is None else tensor
        idxs = self.idxs if idxs is None else idxs
        return _at_least_float32(tensor.detach()[idxs.to(tensor.device)])

    def __repr__(self) -> str:
        return f"LayerChannels({self.name}, {self.kind}, {len(self.idxs)} of {self.n_channels})"


def _declared(pruner: DeclarativeLayerPruner, layer: nn.Module, kind: str) -> tuple[Any, int | None, Any, int | None]:
    """A declarative pruner's table: the weight (named "weight", else its first parameter) and bias, with their dims."""

    def dim_of(spec: Any) -> int | None:
        if pruner.coupled:  # one channel space: the table names it out or in
            return spec.out if spec.out is not None else spec.in_
        return spec.out if kind == "out" else spec.in_

    candidates = [s for s in pruner.tensors if dim_of(s) is not None and isinstance(getattr(layer, s.name, None), nn.Parameter)]
    weight = next((s for s in candidates if s.name == "weight"), None) or next((s for s in candidates if s.name != "bias"), None)
    bias = next((s for s in candidates if s.name == "bias"), None)
    return (getattr(layer, weight.name) if weight else None, dim_of(weight) if weight else None,
            getattr(layer, bias.name) if bias else None, dim_of(bias) if bias else None)


def _layer_channels(node: Node, space: Space, idxs: torch.Tensor) -> LayerChannels | None:
    """How to read the channels ``idxs`` of ``node``'s ``space``, or None when pruneframe cannot tell."""
    layer = node.module
    bias = None
    if node.kind == "parameter":
        weight, rows = layer, _along(node.pruning_dim)
        count = layer.shape[node.pruning_dim]
    elif isinstance(layer, nn.modules.conv._ConvNd):
        weight = layer.weight
        # a conv's output channels are weight rows; a transposed conv's are its input channels
        if space.kind == ("in" if layer.transposed else "out"):
            rows, count = _along(0), weight.shape[0]
        else:
            rows, count = _grouped_columns(layer.groups), weight.shape[1] * layer.groups
        bias = layer.bias if space.kind == "out" else None
    elif isinstance(node.pruner, DeclarativeLayerPruner):
        weight, dim, bias, bias_dim = _declared(node.pruner, layer, space.kind)
        if weight is None:
            return None  # e.g. a norm layer without affine parameters
        if bias is not None and (bias.dim() != 1 or bias_dim != 0):
            bias = None
        rows, count = _along(dim), weight.shape[dim]
    else:
        return None
    if count != space.current_size:
        if count == 1:
            return None  # one value shared by every channel (PReLU's single slope) says nothing about single ones
        raise ValueError(
            f"{node.name} ({node.type}) holds {count} channels along its weight but the graph counts "
            f"{space.current_size} {space.kind}put channels: the model was changed outside the graph. "
            "Call build_dependency again."
        )
    return LayerChannels(node, space, idxs, weight, rows, bias)


# --- from members to root indices --------------------------------------------------------


class _Member:
    """One dependency of a group, with the root index each of its channels belongs to."""

    def __init__(self, node: Node, space: Space, idxs: torch.Tensor, member_pos: torch.Tensor, root_pos: torch.Tensor):
        self.node = node
        self.space = space
        self.idxs = idxs
        self.member_pos = member_pos  # with root_pos: channel idxs[member_pos[k]] goes when root index root_pos[k] does
        self.root_pos = root_pos


_STALE = "the group is older than a prune, so its indices no longer name the same channels. Get it again from the graph."


def _check_current(group: Group) -> None:
    """Refuse a group whose indices a later prune shifted or removed: its scores would land on other channels."""
    traced_of = {id(space): traced for space, traced in group._members}
    for dep, idxs in group:
        space = dep.index_mapping.target
        traced = traced_of.get(id(space))
        if traced is None:
            continue
        if not bool(space.alive[traced].all()) or space.current_positions(traced).tolist() != list(idxs):
            raise ValueError(f"{dep.target.name}: {_STALE}")


def _labels(graph: Any, space: Space, idxs: torch.Tensor) -> torch.Tensor:
    """The coupling component of each current channel: channels of one component are pruned together.

    This is what ``IndexMapping`` follows, read for many channels at once.
    """
    if idxs.numel() and int(idxs.max()) >= space.current_size:
        raise ValueError(f"{space.node.name} has {space.current_size} channels, not {int(idxs.max()) + 1}: {_STALE}")
    return graph._roots[space.base + space.original_positions(idxs)]


def _match(member: torch.Tensor, root: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All pairs (m, r) with ``member[m] == root[r]``, and how many roots each member matched."""
    order = torch.argsort(root, stable=True)
    ordered = root[order]
    lo = torch.searchsorted(ordered, member, side="left")
    counts = torch.searchsorted(ordered, member, side="right") - lo
    member_pos = torch.repeat_interleave(torch.arange(member.numel()), counts)
    first = torch.repeat_interleave(lo, counts)
    within = torch.arange(int(counts.sum())) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    return member_pos, order[first + within], counts


def _members(group: Group) -> Iterator[_Member]:
    """Every dependency of ``group`` with the mapping of its channels onto ``group.root_idxs``."""
    if not len(group):
        return
    _check_current(group)
    mapping = group[0].dep.index_mapping
    root_idxs = torch.as_tensor(list(group.root_idxs), dtype=torch.long)
    root_labels = _labels(mapping.graph, mapping.source, root_idxs)
    for dep, idxs in group:
        space = dep.index_mapping.target
        index = torch.as_tensor(list(idxs), dtype=torch.long)
        member_pos, root_pos, counts = _match(_labels(mapping.graph, space, index), root_labels)
        if bool((counts == 0).any()):
            raise ValueError(f"channels {index[counts == 0].tolist()} of {dep.target.name} are tied to none of the "
                             f"group's root indices: {_STALE}")
        yield _Member(dep.target, space, index, member_pos, root_pos)


def _root_name(group: Group) -> str:
    root = group[0].dep.source
    return f"{root.name} ({root.type})"


# --- reductions and normalisers ------------------------------------------------------------


def _reduce(scores: torch.Tensor, covered: torch.Tensor, how: str) -> torch.Tensor:
    """Per root index (column), combine the scores of the members (rows) that cover it."""
    if how == "sum":
        return scores.sum(0)
    if how == "mean":
        return scores.sum(0) / covered.sum(0).clamp(min=1)
    if how == "max":
        return scores.masked_fill(~covered, float("-inf")).amax(0)
    if how == "prod":
        return scores.masked_fill(~covered, 1.0).prod(0)
    if how == "first":
        first = covered.to(torch.int8).argmax(0)  # the first member, in group order, that covers each root index
        return scores.gather(0, first.unsqueeze(0)).squeeze(0)
    raise ValueError(f"unknown group_reduction {how!r}; use one of {', '.join(GROUP_REDUCTIONS)}")


def _lamp(scores: torch.Tensor) -> torch.Tensor:
    """LAMP: each score divided by the sum of every score at least as large (itself included).

    Equal scores share one denominator, so they stay equal.
    """
    ordered = torch.sort(scores).values
    at_least = torch.flip(torch.cumsum(torch.flip(ordered, [0]), 0), [0])  # at_least[k] = sum(ordered[k:])
    denominator = at_least[torch.searchsorted(ordered, scores, side="left")]
    return torch.where(denominator != 0, scores / torch.where(denominator != 0, denominator, 1), torch.zeros_like(scores))


def _divide(scores: torch.Tensor, by: torch.Tensor) -> torch.Tensor:
    return scores / by if bool(by != 0) else scores  # all-zero scores stay zero rather than becoming NaN


def _normalize(scores: torch.Tensor, how: Normalizer) -> torch.Tensor:
    if how is None:
        return scores
    if callable(how):
        out = how(scores)
        if not isinstance(out, torch.Tensor) or out.shape != scores.shape:
            raise ValueError(f"the normalizer {how!r} must return a tensor of shape {tuple(scores.shape)}, got {out!r}")
        return out
    if how == "sum":
        return _divide(scores, scores.sum())
    if how == "mean":
        return _divide(scores, scores.mean())
    if how == "max":
        return _divide(scores, scores.max())
    if how in ("standarization", "standardization"):  # min-max scaling to [0, 1], as Torch-Pruning spells and means it
        low, high = scores.min(), scores.max()
        return (scores - low) / (high - low) if bool(high > low) else torch.zeros_like(scores)
    if how == "gaussian":
        centred = scores - scores.mean()
        std = scores.std() if scores.numel() > 1 else scores.new_zeros(())
        return centred / std if bool(std > 0) else centred
    if how == "lamp":
        return _lamp(scores)
    raise ValueError(f"unknown normalizer {how!r}; use one of {', '.join(NORMALIZERS)}, None or a function")


def _check_options(group_reduction: str, normalizer: Normalizer) -> None:
    if group_reduction not in GROUP_REDUCTIONS:
        raise ValueError(f"unknown group_reduction {group_reduction!r}; use one of {', '.join(GROUP_REDUCTIONS)}")
    if not (normalizer is None or callable(normalizer) or normalizer in NORMALIZERS):
        raise ValueError(f"unknown normalizer {normalizer!r}; use one of {', '.join(NORMALIZERS)}, None or a function")


# --- criteria --------------------------------------------------------------------------------


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
    "prod" (product) or "first" (the first such member in group order, i.e. the
    root layer when the criterion reads it). ``normalizer`` rescales the
    reduced scores ``s`` of the group: "mean" ``s / mean(s)``, "max"
    ``s / max(s)``, "sum" ``s / sum(s)`` (all three leave all-zero scores
    unchanged), "standarization" (also spelt "standardization";
    min-max scaling as in Torch-Pruning: ``(s - min) / (max - min)``, zeros if
    all are equal), "gaussian" ``(s - mean) / std`` (unbiased std; centred only
    if it is 0), "lamp" (see ``LAMPImportance``), None (unchanged) or a
    function ``tensor -> tensor``.

    Raises ``UnscorableGroupError`` when no member layer is read, when some
    root index has no channel in a layer that is read, or when a score is NaN
    or infinite.
    """

    def __init__(self, group_reduction: str = "mean", normalizer: Normalizer = "mean",
                 target_types: Iterable[type] = DEFAULT_TARGET_TYPES):
        _check_options(group_reduction, normalizer)
        self.group_reduction = group_reduction
        self.normalizer = normalizer
        self.target_types = tuple(target_types)

    @abc.abstractmethod
    def layer_scores(self, channels: LayerChannels) -> torch.Tensor | None:
        """One score per channel of ``channels.idxs``, or None to leave the layer out."""

    @torch.no_grad()
    def __call__(self, group: Group) -> torch.Tensor:
        n = len(group.root_idxs)
        if not len(group) or n == 0:
            return torch.empty(0)
        rows: list[torch.Tensor] = []
        covers: list[torch.Tensor] = []
        with single_threaded():  # many tiny index ops: a thread pool costs more than it saves
            members = list(_members(group))
        for member in members:
            if not counts_as(member.node.module, member.node.pruner, self.target_types):
                continue
            channels = _layer_channels(member.node, member.space, member.idxs)
            if channels is None:
                continue
            local = self.layer_scores(channels)
            if local is None:
                continue
            local = local.detach().to(torch.promote_types(local.dtype, torch.float32))
            if local.shape != (len(member.idxs),):
                raise ValueError(
                    f"{type(self).__name__}.layer_scores gave shape {tuple(local.shape)} for {channels.name}; "
                    f"expected ({len(member.idxs)},), one score per channel"
                )
            if not bool(torch.isfinite(local).all()):
                raise UnscorableGroupError(
                    f"{type(self).__name__} got NaN or infinite scores from {channels.name} in the group of "
                    f"{_root_name(group)}: its weights (or gradients) are not finite"
                )
            device = rows[0].device if rows else local.device
            local = local.to(device)
            row = torch.zeros(n, dtype=local.dtype, device=device)
            row.index_add_(0, member.root_pos.to(device), local[member.member_pos.to(device)])
            covered = torch.zeros(n, dtype=torch.bool, device=device)
            covered[member.root_pos.to(device)] = True
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
        result = _normalize(_reduce(scores, covered, self.group_reduction), self.normalizer)
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

    def __init__(self, p: float = 2, group_reduction: str = "mean", normalizer: Normalizer = "mean", bias: bool = False,
                 target_types: Iterable[type] = DEFAULT_TARGET_TYPES):
        super().__init__(group_reduction, normalizer, target_types)
        if not p > 0:
            raise ValueError(f"p must be positive, got {p!r}")
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

    def __init__(self, group_reduction: str = "mean", normalizer: Normalizer = "mean"):
        super().__init__(p=1, group_reduction=group_reduction, normalizer=normalizer, bias=False,
                         target_types=(nn.modules.batchnorm._BatchNorm,))


class LAMPImportance(MagnitudeImportance):
    """LAMP: magnitude (``p=2``: squared weights), normalised by ``s_i / sum(s_j for s_j >= s_i)`` over the group."""

    def __init__(self, p: float = 2, group_reduction: str = "mean", normalizer: Normalizer = "lamp", bias: bool = False,
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

    def __init__(self, p: float = 2, group_reduction: str = "mean", normalizer: Normalizer = "mean", bias: bool = False,
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

    def __init__(self, group_reduction: str = "mean", normalizer: Normalizer = "mean", multivariable: bool = False,
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

    def __init__(self, group_reduction: str = "mean", normalizer: Normalizer = "mean", bias: bool = False,
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
