"""Nodes of the dependency graph and the channel spaces they own."""
from __future__ import annotations

from typing import Any

import attrs
import torch
from torch import nn


@attrs.define(eq=False, repr=False)
class Space:
    """A run of channel ids owned by one node: its output or its input channels.

    ``alive`` marks which of the traced channels are still in the model, so a
    graph stays valid across several prunes without tracing again.
    """

    node: "Node"
    kind: str  # "out" or "in"
    base: int
    size: int
    alive: torch.Tensor = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.alive = torch.ones(self.size, dtype=torch.bool)

    @property
    def current_size(self) -> int:
        return int(self.alive.sum())

    def original_positions(self, idxs: torch.Tensor) -> torch.Tensor:
        """Traced positions of the current channel indices ``idxs``."""
        return self.alive.nonzero().flatten()[idxs]

    def current_positions(self, original: torch.Tensor) -> torch.Tensor:
        """Current indices of traced positions ``original`` (all of them alive)."""
        return (torch.cumsum(self.alive.long(), 0) - 1)[original]

    def ids(self) -> torch.Tensor:
        return torch.arange(self.base, self.base + self.size)

    def __repr__(self) -> str:
        return f"Space({self.node.name}.{self.kind}, {self.current_size}/{self.size})"


@attrs.define(eq=False, repr=False)
class Node:
    """One prunable thing the tracer met: a leaf layer or a raw ``nn.Parameter``.

    ``module`` is the layer (or the parameter); ``pruner`` the layer pruner
    that serves it, registered by ``plugin``. ``pruning_dim`` is the pruned
    dimension of a raw parameter.
    """

    name: str
    module: Any
    pruner: Any
    plugin: str
    kind: str = "layer"  # "layer" or "parameter"
    pruning_dim: int | None = None
    out_space: Space | None = None
    in_space: Space | None = None
    calls: int = 0

    @property
    def type(self) -> str:
        return "Parameter" if self.kind == "parameter" else type(self.module).__name__

    @property
    def in_out_coupled(self) -> bool:
        if self.kind == "parameter":
            return True
        return bool(self.pruner.in_out_coupled(self.module))

    def space(self, kind: str) -> Space | None:
        return self.out_space if kind == "out" else self.in_space

    def __repr__(self) -> str:
        what = f"{self.name} ({self.type})"
        return f"<Node: {what}>"


def is_parameter(obj: Any) -> bool:
    return isinstance(obj, nn.Parameter)
