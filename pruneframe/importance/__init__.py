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

``ActivationImportance`` scores channels by their activations on calibration
data (``pruner.calibrate(batches)``, or Torch-Pruning's
``with imp.compute_importance(model): model(batch)``).

Criteria are also registered by name through the ``pruneframe_importances``
plugin hook: ``pruneframe.importance.from_name("l1")``.
"""
from __future__ import annotations

from typing import Any

from ..registry import UnknownImportanceError, get_registry
from .activation import ActivationImportance, NotCalibratedError
from .block_influence import BlockInfluenceImportance
from .channels import LayerChannels, read_channels
from .criteria import (
    DEFAULT_TARGET_TYPES,
    BNScaleImportance,
    FPGMImportance,
    GroupHessianImportance,
    GroupMagnitudeImportance,
    GroupNormImportance,
    GroupTaylorImportance,
    HessianImportance,
    Importance,
    LAMPImportance,
    MagnitudeImportance,
    NothingToReadError,
    PerLayerImportance,
    RandomImportance,
    TaylorImportance,
    UnscorableGroupError,
)
from .experts import RouterMassImportance, expert_magnitude
from .reductions import GROUP_REDUCTIONS, NORMALIZERS, Normalizer

__all__ = [
    "DEFAULT_TARGET_TYPES",
    "ActivationImportance",
    "NotCalibratedError",
    "GROUP_REDUCTIONS",
    "NORMALIZERS",
    "Normalizer",
    "BNScaleImportance",
    "BlockInfluenceImportance",
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
    "RouterMassImportance",
    "TaylorImportance",
    "UnknownImportanceError",
    "UnscorableGroupError",
    "expert_magnitude",
    "from_name",
    "read_channels",
]


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
