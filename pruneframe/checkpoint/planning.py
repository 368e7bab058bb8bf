"""``open_for_planning``: a Hugging Face checkpoint directory as a meta-device model ready to plan, and its checkpoint.

The model is the class its ``config.json`` names (``architectures``), built
from the config on the meta device: no memory for weights, and its
state-dict names are the checkpoint's own, which is checked (names and
shapes) before anything else runs. Plan on it with MetaPruner and
``session.importance(...)``, then ``session.save(out)`` streams the pruned
checkpoint.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import nn

from ..importance.criteria import PerLayerImportance
from .building import parameters_on_meta
from .importance import CheckpointImportance
from .onload import LayerLoader
from .reader import Checkpoint, CheckpointError
from .stream import save_pruned


@attrs.define
class PlanningSession:
    """A checkpoint, the meta-device model its config builds (to be pruned), an unpruned twin, and example inputs."""

    checkpoint: Checkpoint
    model: nn.Module
    original: nn.Module
    example_inputs: dict[str, torch.Tensor]
    loader: LayerLoader

    def importance(self, criterion: PerLayerImportance, device: torch.device | str | None = None) -> CheckpointImportance:
        """``criterion`` reading the checkpoint's weights, one layer at a time."""
        return CheckpointImportance(criterion, self.loader, device)

    def save(self, out: str | os.PathLike[str], progress: Any = None) -> Path:
        """Stream the pruned checkpoint into the new directory ``out`` (see ``save_pruned``)."""
        return save_pruned(self.model, self.loader, out, progress)

    def forward(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> Any:
        """The forward a graph of a Hugging Face model uses: keyword inputs, the first output."""
        out = model(**inputs)
        return out[0] if isinstance(out, tuple) or hasattr(out, "to_tuple") else out


def build_on_meta(config: Any) -> nn.Module:
    """The model class ``config.architectures`` names (the one that wrote the checkpoint), else ``AutoModel``'s, on meta."""
    import transformers

    found = [getattr(transformers, name, None) for name in getattr(config, "architectures", None) or ()]
    cls = next((c for c in found if isinstance(c, type) and issubclass(c, nn.Module)), None)
    with parameters_on_meta():  # buffers real: the model can run once its layers are onloaded (calibration)
        return cls(config) if cls is not None else transformers.AutoModel.from_config(config)


def open_for_planning(directory: str | os.PathLike[str], sequence_length: int = 8) -> PlanningSession:
    """Open the checkpoint in ``directory``, build its model on the meta device, and check the two fit."""
    try:
        from transformers import AutoConfig
    except ImportError as exc:
        raise CheckpointError("planning a Hugging Face checkpoint needs the transformers package (pip install transformers)") from exc
    checkpoint = Checkpoint(directory)  # the weights are checked before the config is even read
    try:
        config = AutoConfig.from_pretrained(str(directory), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{directory} has no readable config.json ({type(exc).__name__}: {exc})") from exc
    model = build_on_meta(config).eval()
    checkpoint.check_fits(model)
    original = copy.deepcopy(model)
    vocab = int(getattr(config, "vocab_size", 2) or 2)
    inputs = {"input_ids": torch.zeros(1, sequence_length, dtype=torch.long, device="meta").clamp_(max=vocab - 1)}
    return PlanningSession(checkpoint, model, original, inputs, LayerLoader(model, original, checkpoint))
