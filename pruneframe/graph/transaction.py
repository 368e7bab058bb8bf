"""A prune as a transaction: remember what the touched modules hold, run the steps, and put it all back on any failure.

``Group.prune()`` and plan replay both apply prunes through ``Transaction``,
so a model is never left half-pruned. Nothing is copied: the snapshot keeps
references to the original tensors (pruners replace tensors rather than write
into them), so the cost is the model plus the new tensors the steps create.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
from torch import nn

from ..errors import PruningError


class Transaction:
    """Everything a prune can change in ``modules`` (and their submodules) and ``tensors``, to put back if it fails."""

    def __init__(self, modules: Iterable[nn.Module] = (), tensors: Iterable[torch.Tensor] = ()):
        kept_modules: dict[int, nn.Module] = {}
        kept_tensors: dict[int, torch.Tensor] = {id(t): t for t in tensors}
        for module in modules:
            for m in module.modules():
                kept_modules[id(m)] = m
                for t in [*m._parameters.values(), *m._buffers.values()]:
                    if t is not None:
                        kept_tensors[id(t)] = t
        self._modules = [(m, dict(m.__dict__), dict(m._parameters), dict(m._buffers), dict(m._modules))
                         for m in kept_modules.values()]
        self._objects = [(o, dict(vars(o))) for o in _attribute_objects(kept_modules.values())]
        self._tensors = [(t, t.detach(), t.detach()._version, t.grad) for t in kept_tensors.values()]
        # parameters held by several of the modules (tied weights): pruned once, by the first holder, and kept one object
        holders: dict[int, list[tuple[nn.Module, str]]] = {}
        for m in kept_modules.values():
            for name, p in m._parameters.items():
                if p is not None:
                    holders.setdefault(id(p), []).append((m, name))
        self._shared = {k: v for k, v in holders.items() if len(v) > 1}
        self._shared_object = {id(p): p for m in kept_modules.values() for p in m._parameters.values()
                               if p is not None and id(p) in self._shared}
        self._saved = {id(t): (data, grad) for t, data, _, grad in self._tensors}
        self._pruned_shared: set[int] = set()

    def restore(self) -> None:
        """Put every remembered module and tensor back as it was."""
        for m, attributes, params, buffers, children in self._modules:
            m.__dict__.clear()
            m.__dict__.update(attributes)
            for container, saved in ((m._parameters, params), (m._buffers, buffers), (m._modules, children)):
                container.clear()
                container.update(saved)
        for o, attributes in self._objects:
            if vars(o) != attributes:
                vars(o).clear()
                vars(o).update(attributes)
        for t, data, _, grad in self._tensors:
            t.data = data
            t.grad = grad

    def written_in_place(self) -> list[str]:
        """The original tensors someone wrote into (their version counter moved)."""
        return [f"a tensor of shape {tuple(data.shape)}" for _, data, version, _ in self._tensors if data._version != version]

    def run(self, what: str, step: Callable[[], Any], module: nn.Module | None = None) -> Any:
        """Run one step and return what it returned; if it raises or writes into an original tensor, restore everything and raise
        a PruningError naming ``what``.

        ``module`` is the layer the step prunes: a parameter it shares with a
        layer pruned before in this transaction is handed to it as a stand-in
        with the original values, so the shared tensor is pruned once; the two
        results must agree, and the layers keep sharing one parameter.
        """
        stand_ins = self._stand_ins(module) if module is not None and self._shared else []
        try:
            result = step()
        except Exception as exc:  # any failure of a plugin's code: undo, and name the step and plugin
            self.restore()
            raise PruningError(
                f"{what} failed: {type(exc).__name__}: {exc}. Every touched module was restored; the model is as it was."
            ) from exc
        written = self.written_in_place()
        if written:
            self.restore()
            raise PruningError(
                f"{what} wrote in place into {', '.join(written)}: pruners must replace tensors (see "
                "pruneframe.layer_pruner.select_), never modify them, or no failed prune can be undone. Shapes and "
                "attributes were restored, but the values it overwrote cannot be; fix the pruner."
            )
        if module is not None and self._shared:
            problem = self._retie(module, stand_ins)
            if problem:
                self.restore()
                raise PruningError(f"{what}: {problem}. Every touched module was restored; the model is as it was.")
        return result

    def _stand_ins(self, module: nn.Module) -> list[tuple[nn.Module, str, nn.Parameter]]:
        """Give ``module`` stand-ins, holding the original values, for the shared parameters already pruned."""
        stand_ins = []
        for sub in module.modules():
            for name, p in list(sub._parameters.items()):
                if p is not None and id(p) in self._pruned_shared:
                    data, grad = self._saved[id(p)]
                    stand_in = nn.Parameter(data, requires_grad=p.requires_grad)
                    stand_in.grad = grad
                    sub._parameters[name] = stand_in
                    stand_ins.append((sub, name, p))
        return stand_ins

    def _retie(self, module: nn.Module, stand_ins: list[tuple[nn.Module, str, nn.Parameter]]) -> str | None:
        """Put the shared parameters back into ``module``, checking a stand-in came out as the first prune made it."""
        for sub, name, shared in stand_ins:
            result = sub._parameters[name]
            same = result is not None and result.shape == shared.shape and (
                result.is_meta or shared.is_meta or torch.equal(result.detach(), shared.detach()))  # meta: shapes are all there is
            if not same:
                others = ", ".join(type(m).__name__ for m, _ in self._shared[id(shared)] if m is not sub)
                return (f"its parameter {name!r}, shared with {others}, was pruned differently by the two layers "
                        "(tied weights must lose the same entries): keep one of them (ignored_layers)")
            sub._parameters[name] = shared
        for key, holders in self._shared.items():
            shared = self._shared_object[key]
            data, _ = self._saved[key]
            for sub, name in holders:
                if not any(sub is m for m in module.modules()):
                    continue
                result = sub._parameters[name]
                if result is not shared and result is not None:  # the pruner made a new parameter: keep the tied one
                    shared.data, shared.grad = result.data, result.grad
                    sub._parameters[name] = shared
            if shared.shape != data.shape or shared.data_ptr() != data.data_ptr():
                self._pruned_shared.add(key)
        return None

    def fail(self, error: PruningError) -> None:
        """Restore everything and raise ``error``."""
        self.restore()
        raise error


def _is_plain_object(value: Any) -> bool:
    """An object with attributes of its own that a fix-up may set (a config), not a layer, tensor, class or function."""
    return (hasattr(value, "__dict__") and not isinstance(value, (nn.Module, torch.Tensor, type)) and not callable(value)
            and type(value).__module__ != "builtins")


def _attribute_objects(modules: Iterable[nn.Module]) -> list[Any]:
    """The plain objects the modules hold (a Hugging Face config) and those they hold in turn (its nested configs)."""
    found: dict[int, Any] = {}
    todo = [v for m in modules for v in vars(m).values() if _is_plain_object(v)]
    while todo:
        obj = todo.pop()
        if id(obj) not in found:
            found[id(obj)] = obj
            todo += [v for v in vars(obj).values() if _is_plain_object(v)]
    return list(found.values())
