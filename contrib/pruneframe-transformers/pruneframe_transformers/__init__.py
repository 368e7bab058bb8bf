"""pruneframe plugin for Hugging Face transformers: GPT-2's ``Conv1D``, stored attention sizes, and ``model.config``.

Installing this distribution is all it takes: its ``pruneframe.plugins`` entry
point (``transformers`` -> ``pruneframe_transformers.plugin``) registers the
pruner and fix-ups. The functions here are for checking a pruned model by hand::

    from pruneframe_transformers import check_config
    assert check_config(model) == []   # model.config rebuilds exactly this model
"""
from __future__ import annotations

from .config_sync import MARKER, ConfigMismatchWarning, ConfigStatus, check_config, layer_sizes, sync_config
from .conv1d import Conv1DPruner
from .experts import MoeLayer, moe_layers, prune_expert_widths, prune_experts, router_modules
from .probing import ProbeCacheInfo, probe_cache_clear, probe_cache_info

__version__ = "0.1.0"

__all__ = ["MARKER", "ConfigMismatchWarning", "ConfigStatus", "Conv1DPruner", "MoeLayer", "ProbeCacheInfo", "check_config",
           "layer_sizes", "moe_layers", "probe_cache_clear", "probe_cache_info", "prune_expert_widths", "prune_experts",
           "router_modules", "sync_config"]
