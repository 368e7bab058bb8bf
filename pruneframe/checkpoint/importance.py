"""``CheckpointImportance``: a weight criterion scoring a model that has no weights, from its checkpoint.

Wrap any criterion that reads weights (magnitude L1/L2, BN scale, LAMP,
FPGM) around a model planned on the meta device: each member layer of a group
is onloaded from the checkpoint just while the criterion reads it (one layer
at a time, its earlier prunes replayed), so a group spanning every layer of a
70B model never holds more than one layer's tensors. The scores are the ones
the same criterion gives the model loaded whole.
"""
from __future__ import annotations

import torch
from torch import nn

from ..graph import Member
from ..importance.activation import ActivationImportance
from ..importance.channels import LayerChannels
from ..importance.criteria import HessianImportance, PerLayerImportance, TaylorImportance
from .onload import LayerLoader


class CheckpointImportance(PerLayerImportance):
    """``importance`` (a weight criterion) with every layer it reads onloaded by ``loader`` meanwhile."""

    def __init__(self, importance: PerLayerImportance, loader: LayerLoader, device: torch.device | str | None = None):
        if not isinstance(importance, PerLayerImportance) or isinstance(importance, CheckpointImportance):
            raise TypeError(f"CheckpointImportance wraps a weight criterion such as MagnitudeImportance(p=2), "
                            f"not {type(importance).__name__}")
        if isinstance(importance, (TaylorImportance, HessianImportance, ActivationImportance)):
            raise TypeError(f"{type(importance).__name__} reads gradients or activations, which a model planned without its "
                            "weights does not have; use a weight criterion (MagnitudeImportance, LAMPImportance, FPGMImportance) "
                            "or load the model to calibrate it")
        super().__init__(importance.group_reduction, importance.normalizer, importance.target_types)
        self.importance = importance
        self.loader = loader
        self.device = device

    def layer_scores(self, channels: LayerChannels) -> torch.Tensor | None:
        return self.importance.layer_scores(channels)

    def member_scores(self, member: Member) -> tuple[torch.Tensor, str] | None:
        node = member.node
        if not isinstance(node.module, nn.Module):
            raise TypeError(f"{node.name} is a raw parameter; CheckpointImportance reads layers only: ignore it "
                            "(ignored_layers) or load the model")
        with self.loader.onloaded(node.module, node.name, self.device):
            return self.importance.member_scores(member)
