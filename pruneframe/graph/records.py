"""Public records a graph reports: a layer side kept whole and why, and two spaces the trace tied directly."""
from __future__ import annotations

import attrs
import torch

from .node import Space


@attrs.frozen
class KeptWhole:
    """One side of a layer whose channels all stay, and why: ``kind`` is "out" or "in", ``channels`` how many it has."""

    name: str
    type: str
    kind: str
    channels: int
    reasons: tuple[str, ...] = attrs.field(converter=tuple)


@attrs.frozen(eq=False)
class ChannelTie:
    """Channels of two spaces the trace tied directly: traced position ``a_positions[k]`` of ``a`` with ``b_positions[k]`` of ``b``."""

    a: Space
    b: Space
    a_positions: torch.Tensor
    b_positions: torch.Tensor
