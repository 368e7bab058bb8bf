"""Building a model without memory for its weights: parameters on the meta device, buffers real.

Under ``torch.device("meta")`` everything is shapes only, buffers too, so a
model that computes a buffer in its constructor (rotary frequencies, masks)
cannot run even once its weights are onloaded. ``parameters_on_meta`` moves
each parameter to the meta device as the constructor registers it (before the
constructor initialises it, so no initialisation runs on real memory), and
leaves buffers where the constructor made them: the model then runs for real
when its layers are onloaded one at a time (``LayerLoader.onloading``).
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

from torch import nn


@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Inside, every parameter a module registers is moved to the meta device; buffers stay as made."""
    register = nn.Module.register_parameter

    def register_on_meta(module: nn.Module, name: str, param: Any) -> None:
        register(module, name, param)
        if param is not None and param.device.type != "meta":
            kind = type(param)
            moved = param.to("meta")
            module._parameters[name] = kind(moved, requires_grad=param.requires_grad) if kind is nn.Parameter else moved

    nn.Module.register_parameter = register_on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register
