"""The user's layer of pruneframe's reference example: normalise, scale and shift per channel, then a square Linear."""
from __future__ import annotations

import torch
from torch import nn


class CustomizedLayer(nn.Module):
    """Scale and shift L2-normalised features per channel, then mix them with an ``in_dim x in_dim`` Linear.

    Its input and output are one channel space of width ``in_dim``: channel
    ``i`` owns ``scale[i]``, ``bias[i]``, row ``i`` and column ``i`` of
    ``fc.weight`` and ``fc.bias[i]``.

    Example::

        layer = CustomizedLayer(256)
        y = layer(torch.randn(4, 256))   # shape (4, 256)
    """

    def __init__(self, in_dim: int):
        super().__init__()
        if not isinstance(in_dim, int) or in_dim < 1:
            raise ValueError(f"CustomizedLayer needs a positive int in_dim, got {in_dim!r}")
        self.in_dim = in_dim
        # identity scale and zero shift: the layer starts as normalise-then-Linear
        self.scale = nn.Parameter(torch.ones(in_dim))
        self.bias = nn.Parameter(torch.zeros(in_dim))
        self.fc = nn.Linear(in_dim, in_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = x.pow(2).sum(dim=1, keepdim=True).sqrt()
        x = torch.div(x, norm)
        return self.fc(x * self.scale + self.bias)

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}"
