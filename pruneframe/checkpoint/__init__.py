"""Checkpoints bigger than memory: plan on the meta device with weights read from safetensors, then stream the prune.

``Checkpoint(DIR)`` opens and checks a safetensors directory (shards and
index), ``LayerLoader`` onloads one layer at a time with the plan applied,
``CheckpointImportance`` scores a meta-device model from the checkpoint, and
``save_pruned`` writes the pruned checkpoint tensor by tensor into a new
directory. ``open_for_planning`` does the set-up for a Hugging Face directory.
"""
from __future__ import annotations

from .importance import CheckpointImportance
from .onload import LayerLoader
from .planning import open_for_planning, PlanningSession
from .reader import Checkpoint, CheckpointError
from .stream import save_pruned
from .writer import check_output_directory

__all__ = ["Checkpoint", "CheckpointError", "CheckpointImportance", "LayerLoader", "PlanningSession", "check_output_directory",
           "open_for_planning", "save_pruned"]
