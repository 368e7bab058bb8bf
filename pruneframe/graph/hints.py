"""``ModuleHints``: what plugins' module hints say a model's code fixes (channels to keep, couplings no tensor shows)."""
from __future__ import annotations

from typing import Any

from torch import nn


class ModuleHints:
    """What plugins' module hints say a model's code fixes; handed to each hint function."""

    def __init__(self) -> None:
        self.kept: list[tuple[nn.Module, str, str]] = []
        self.coupled: list[tuple[Any, str, Any, str, str]] = []

    def keep_out_channels(self, layer: nn.Module, reason: str) -> None:
        """``layer``'s output channels must all stay, because of ``reason``."""
        self.kept.append((layer, "out", reason))

    def keep_in_channels(self, layer: nn.Module, reason: str) -> None:
        """``layer``'s input channels must all stay, because of ``reason``."""
        self.kept.append((layer, "in", reason))

    def couple(self, layer_a: Any, kind_a: str, layer_b: Any, kind_b: str, reason: str) -> None:
        """Channel i of ``layer_a``'s ``kind_a`` ("out"/"in") channels goes with channel i of ``layer_b``'s ``kind_b``.

        For couplings no tensor shows: a router's output rows pick experts by index, and the experts of fused
        expert weights (a raw-parameter space, named by the parameter) must follow them. The two must have as
        many channels; when they do not, or one of them is not a node of the graph, both keep all their channels.
        """
        for kind in (kind_a, kind_b):
            if kind not in ("out", "in"):
                raise ValueError(f"couple: kind {kind!r}; use 'out' or 'in'")
        self.coupled.append((layer_a, kind_a, layer_b, kind_b, reason))
