"""The pruneframe plugin for Hugging Face transformers, found through the ``pruneframe.plugins`` entry point ``transformers``.

- a layer pruner for ``Conv1D`` (GPT-2's projections), functional names
  ``prune_hf_conv1d_out_channels`` / ``prune_hf_conv1d_in_channels``;
- mixtures of experts, found by their tensors in the model at hand (``experts.moe_layers``): a pruner for the
  fused experts (output channels: each expert's hidden units, pruned alike in every expert) and one for the
  router (output channels: whole experts), a hint that couples the router's rows with the expert dimension
  of the fused tensors, and a fix-up that keeps the stored expert counts in step;
- fix-ups: ``model.config`` follows the model of any family where a config
  can say it exactly, inferred from the shapes and proven by a meta-device
  rebuild (``config_sync``); the stored sizes of a few module classes follow
  their weights even where no config can (``families``);
- a module hint: an attention module of a known class that lacks an attribute
  the fix-ups rely on (another transformers version) keeps its projections
  whole, since nothing would keep its stored sizes right.

Without transformers installed the plugin registers nothing. With it, loading
pruneframe's plugins imports transformers and the modeling modules of the
families below (a few seconds, once per process).
"""
from __future__ import annotations

from typing import Any

from torch import nn

import pruneframe
from pruneframe.hookspecs import RegisterFixup, RegisterLayerPruner, RegisterModuleHint

from .config_sync import enclosing_model, install_export_check, sync_config
from .conv1d import Conv1DPruner
from .experts import (ExpertRouterPruner, FusedExpertsPruner, TransposedExpertsPruner, couple_router_and_experts, follow_expert_counts,
                      fused_experts, moe_blocks, router_modules)
from .families import families, family_of, missing_needs

try:
    from transformers.modeling_utils import PreTrainedModel
    from transformers.pytorch_utils import Conv1D
except ImportError:  # transformers is what this plugin is for; without it there is nothing to register
    PreTrainedModel = Conv1D = None


def _families() -> tuple[Any, ...]:
    return families() if PreTrainedModel is not None else ()


def _sync_config(model: nn.Module) -> str | None:
    """The config fix-up; returns why the config cannot state the prune however the layers are pruned (see ``pruneframe_fixups``)."""
    if enclosing_model(model) is not None:  # the enclosing model's fix-up, run just before, covered this one
        return None
    status = sync_config(model)
    install_export_check(model)
    return status.reason if status.unstatable else None


def _guarded(family: Any) -> Any:
    """``family.fixup``, skipping a module that lacks what it relies on (its projections are kept whole by the hint)."""

    def fixup(module: nn.Module) -> None:
        if not missing_needs(module, family):
            family.fixup(module)

    fixup.__name__ = fixup.__qualname__ = family.fixup.__name__
    return fixup


def _keep_unknown_layout(module: nn.Module, hints: Any) -> None:
    family = family_of(module)
    missing = missing_needs(module, family) if family is not None else []
    if not missing:
        return
    reason = (f"{type(module).__name__} lacks {', '.join(missing)}, which pruneframe-transformers reads to keep its "
              "stored sizes right (another transformers version?)")
    for name in family.projections:
        layer = getattr(module, name, None)
        if isinstance(layer, nn.Module):
            hints.keep_out_channels(layer, reason)
            hints.keep_in_channels(layer, reason)


@pruneframe.hookimpl
def pruneframe_layer_pruners(register: RegisterLayerPruner) -> None:
    """Register the ``Conv1D`` pruner."""
    if Conv1D is not None:
        register(Conv1DPruner(), [Conv1D], name="hf_conv1d")
        register(FusedExpertsPruner(), find=fused_experts)  # no functional names: found per model, not listed
        register(TransposedExpertsPruner(), find=lambda model: fused_experts(model, transposed=True))
        register(ExpertRouterPruner(), find=router_modules)


@pruneframe.hookimpl
def pruneframe_fixups(register: RegisterFixup) -> None:
    """Register the stored-size fix-ups of every known module class, and the config fix-up of ``PreTrainedModel``."""
    for family in _families():
        register([family.cls], _guarded(family), name=family.name)
    if PreTrainedModel is not None:
        register([PreTrainedModel], follow_expert_counts, name="hf-expert-counts")  # before the config reads them
        register([PreTrainedModel], _sync_config, name="hf-config")


@pruneframe.hookimpl
def pruneframe_module_hints(register: RegisterModuleHint) -> None:
    """Keep the projections of attention modules whose layout the fix-ups do not know."""
    for family in _families():
        if family.projections:
            register([family.cls], _keep_unknown_layout, name=f"{family.name}-layout")
    if PreTrainedModel is not None:
        register([], couple_router_and_experts, name="hf-expert-routing", find=moe_blocks)
