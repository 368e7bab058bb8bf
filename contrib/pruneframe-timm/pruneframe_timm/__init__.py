"""pruneframe support for timm models: installing this distribution is all it takes.

Its ``pruneframe.plugins`` entry point (``timm`` -> ``pruneframe_timm.plugin``)
registers fix-ups that keep the sizes timm modules store (attention head
widths, ``embed_dim``, ``num_features``, ...) in step with pruned weights,
hints that keep channels whose width timm's code ties to another, and a
pruner for timm's channels-first layer norms.
"""
from __future__ import annotations

__version__ = "0.1.0"

__all__: list[str] = []
