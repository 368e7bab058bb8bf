"""An example pruneframe plugin distribution: a user's own layer, made prunable by a plugin.

Installing this distribution is all it takes: its ``pruneframe.plugins`` entry
point (``example`` -> ``pruneframe_example.plugin``) registers a pruner for
``CustomizedLayer``, so a ``DependencyGraph`` prunes the layer without any
``register_customized_layer`` call.
"""
from __future__ import annotations

from .layer import CustomizedLayer

__version__ = "0.1.0"

__all__ = ["CustomizedLayer"]
