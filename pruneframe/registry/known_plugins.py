"""Model-family plugins published alongside pruneframe, by the framework (top-level module) whose models they serve.

Without its family plugin a model still prunes, but sizes the framework keeps outside the layers (a Hugging Face
config's ``hidden_size``, a timm attention block's ``num_heads``) are left stale, so the pruned model breaks later,
in ``from_pretrained`` or in its forward pass. The graph warns when it meets such a model with no plugin for its
framework, and names the distribution to install.
"""
from __future__ import annotations

FAMILY_PLUGINS = {
    "transformers": "pruneframe-transformers",
    "timm": "pruneframe-timm",
}


def missing_family_plugins(frameworks_in_model: set[str], frameworks_served: set[str]) -> list[tuple[str, str]]:
    """(framework, distribution to install) for each framework of the model that no installed plugin serves."""
    return [(fw, dist) for fw, dist in sorted(FAMILY_PLUGINS.items()) if fw in frameworks_in_model and fw not in frameworks_served]
