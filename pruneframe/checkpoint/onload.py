"""Real weights for one layer at a time: read from a checkpoint, pruned by the layer's own plan entries.

A model planned on the meta device has shapes and no values. ``LayerLoader``
gives any of its layers real tensors: the layer's original tensors are read
from the checkpoint (one tensor at a time), and the plan's entries for that
layer are replayed on them in order with the layer's own pruner, so the
result is what pruning the whole model in memory would have given that layer.
Layer pruners change only their own layer, which is what makes this exact;
fix-ups (sizes stored elsewhere) already ran on the planned model.
"""
from __future__ import annotations

import contextlib
import copy
from typing import Any, Iterator

import torch
from torch import nn

from ..errors import PruningError
from ..plan import DEPTH, plan_steps
from ..pruner.depth import CONTAINERS, position_history
from ..registry import Registry, get_registry
from .reader import Checkpoint, tied_names


class LayerLoader:
    """Onloads layers of ``model`` (planned, usually on the meta device) from ``checkpoint``.

    ``original`` is the model as its config builds it, unpruned (on the meta
    device: it is only copied for shapes and code). Entries of ``model``'s plan
    made after this loader was created are seen too.
    """

    def __init__(self, model: nn.Module, original: nn.Module, checkpoint: Checkpoint, registry: Registry | None = None):
        self.model = model
        self.original = original
        self.checkpoint = checkpoint
        self.registry = get_registry(model) if registry is None else registry
        if registry is not None:
            registry.discover(model)  # classes a plugin serves by their structure (find=), as get_registry does
        self._aliases = tied_names(original)
        self._index: tuple[int, dict[str, list[dict[str, Any]]]] | None = None

    def entries_of(self, name: str) -> list[dict[str, Any]]:
        """The plan's entries for layer (or raw parameter) ``name`` (of the planned model), in the order they were made."""
        return self.entries_by_original().get(self.original_name(name), [])

    def entries_by_original(self) -> dict[str, list[dict[str, Any]]]:
        """Every layer's plan entries, by the layer's name in the original model (removed blocks renumber the others)."""
        steps = plan_steps(self.model)
        if self._index is not None and self._index[0] == len(steps):
            return self._index[1]
        found: dict[str, list[dict[str, Any]]] = {}
        removals: dict[str, int] = {}  # per layer list: how many of its depth steps came before this point
        for step in steps:
            for entry in step:
                if entry["kind"] != DEPTH:
                    found.setdefault(self.original_name(entry["layer"], removals), []).append(entry)
            for entry in step:
                if entry["kind"] == DEPTH:
                    removals[entry["layer"]] = removals.get(entry["layer"], 0) + 1
        self._index = (len(steps), found)
        return found

    def original_name(self, name: str, removals: dict[str, int] | None = None) -> str:
        """A name of the planned model (after ``removals`` depth steps per layer list; default all) in the original."""
        if name == "(model)":
            return name
        parts, module, path = name.split("."), self.model, []
        for k, part in enumerate(parts):
            children = getattr(module, "_modules", None)
            history = position_history(module) if isinstance(module, CONTAINERS) else None
            prefix = ".".join(parts[:k])
            if history is not None and len(history) > 1 and part.isdigit():
                stage = len(history) - 1 if removals is None else removals.get(prefix, 0)
                path.append(str(history[stage][int(part)]))
            else:
                path.append(part)
            module = children.get(part) if children is not None else None
        return ".".join(path)

    def source_name(self, name: str) -> str:
        """The checkpoint's name for state-dict tensor ``name`` (a tied tensor is stored under one of its names)."""
        if name in self.checkpoint.tensors:
            return name
        for alias in self._aliases.get(name, ()):
            if alias in self.checkpoint.tensors:
                return alias
        raise PruningError(f"{name} is not in the checkpoint {self.checkpoint.directory}")

    def load_layer(self, name: str, device: torch.device | str | None = None) -> nn.Module:
        """A real copy of layer ``name`` (of the planned model): its checkpoint tensors with its plan applied."""
        return self.load_original(self.original_name(name), device)

    def load_original(self, name: str, device: torch.device | str | None = None) -> nn.Module:
        """As ``load_layer``, for a layer named as in the original model (and the checkpoint)."""
        template = self.original.get_submodule("" if name == "(model)" else name)
        layer = copy.deepcopy(template)
        prefix = "" if name == "(model)" else name + "."
        state = {key: self.checkpoint.get(self.source_name(prefix + key)).to(device or "cpu")
                 for key in template.state_dict(keep_vars=True)}
        layer.load_state_dict(state, assign=True)
        found = self.registry.resolve(type(layer))
        entries = self.entries_by_original().get(name, [])
        if entries and found is None:
            raise PruningError(f"no installed plugin prunes {type(layer).__qualname__} ({name}); install the one that planned it")
        with torch.no_grad():
            for entry in entries:
                self.registry.handler(found.pruner, entry["kind"])(layer, list(entry["idxs"]))
        return layer

    def load_parameter(self, name: str, device: torch.device | str | None = None) -> torch.Tensor:
        """Raw parameter ``name`` (no layer owns it) from the checkpoint, with its plan entries applied."""
        return self.load_original_parameter(self.original_name(name), device)

    def load_original_parameter(self, name: str, device: torch.device | str | None = None) -> torch.Tensor:
        """As ``load_parameter``, for a parameter named as in the original model (and the checkpoint)."""
        tensor = nn.Parameter(self.checkpoint.get(self.source_name(name)).to(device or "cpu"), requires_grad=False)
        found = self.registry.resolve(nn.Parameter)
        with torch.no_grad():
            for entry in self.entries_by_original().get(name, []):  # a raw parameter's pruner replaces its data in place
                self.registry.handler(found.pruner, "out", int(entry["dim"]))(tensor, list(entry["idxs"]))
        return tensor.detach()

    @contextlib.contextmanager
    def onloaded(self, module: nn.Module, name: str, device: torch.device | str | None = None) -> Iterator[nn.Module]:
        """Inside, ``module`` (layer ``name`` of the planned model) holds its real tensors; afterwards its own again."""
        real = self.load_layer(name, device)
        kept: list[tuple[nn.Module, str, str, Any]] = []
        for path, tensor in real.state_dict(keep_vars=True).items():
            owner_path, _, attr = path.rpartition(".")
            owner = module.get_submodule(owner_path) if owner_path else module
            table = "_parameters" if attr in owner._parameters else "_buffers"
            kept.append((owner, table, attr, getattr(owner, table)[attr]))
            getattr(owner, table)[attr] = tensor
        try:
            yield module
        finally:
            for owner, table, attr, original in kept:
                getattr(owner, table)[attr] = original

    @contextlib.contextmanager
    def onloading(self, device: torch.device | str | None = None) -> Iterator[nn.Module]:
        """Inside, running the planned model onloads each layer just while it runs (layer-wise onloading).

        The model's parameters stay on the meta device outside a layer's own forward; its buffers must be real
        (``open_for_planning`` builds it so). A layer is the outermost module a plugin prunes, or any module with
        parameters of its own; code that reads a layer's weights outside that layer's forward sees meta tensors
        and fails with torch's message about meta tensors.
        """
        handles = []
        for name, module in self._units():
            state: dict[str, Any] = {}

            def pre(mod: nn.Module, args: Any, name: str = name, state: dict[str, Any] = state) -> None:
                state["context"] = self.onloaded(mod, name, device)
                state["context"].__enter__()

            def post(mod: nn.Module, args: Any, output: Any, state: dict[str, Any] = state) -> None:
                state.pop("context").__exit__(None, None, None)

            handles.append(module.register_forward_pre_hook(pre))
            handles.append(module.register_forward_hook(post, always_call=True))
        try:
            yield self.model
        finally:
            for handle in handles:
                handle.remove()

    def _units(self) -> list[tuple[str, nn.Module]]:
        """The modules onloaded as one: the outermost a plugin prunes, or those with tensors of their own."""
        units, inside = [], set()
        for name, module in self.model.named_modules():
            if id(module) in inside:
                continue
            own = any(True for _ in module.parameters(recurse=False))
            if self.registry.resolve(type(module)) is not None or own:
                units.append((name or "(model)", module))
                inside.update(id(m) for m in module.modules())
        return units
