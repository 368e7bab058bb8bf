"""Depth pruning: find a model's stacks of repeated blocks and remove whole blocks, recorded in the pruning plan.

A *layer list* is an ``nn.ModuleList`` or ``nn.Sequential`` holding at least two
blocks (modules with submodules of their own) of one class and one layout (the
same parameter and buffer names): a transformer's decoder layers, a ViT's
encoder blocks, the repeated stages of a CNN. A block is *removable* when
another block of its list has its class and layout, so a first block that adds
a projection (a ResNet stage's downsampling block) stays. ``layer_lists(model)``
lists them; ``remove_layers(model, layers)`` removes blocks named by module,
by name (``"model.layers.3"``), by position (when the model has one layer list)
or by a ``LayerScore`` of ``rank_layers``::

    import pruneframe as tp
    ranked = tp.pruner.rank_layers(model, calibration_batches)   # least influential first
    tp.pruner.remove_layers(model, ranked[:2])

Everything is checked before anything changes (a name that is no block, a block
named twice, a list left empty); the removal is one transaction with the
installed plugins' fix-ups (a Hugging Face config follows), and with
``example_inputs`` the model must still run afterwards or nothing changes. The
kept blocks are renumbered: a numbered list keeps the names ``0 .. n-1`` and
every integer attribute of a block that holds its position (``layer_idx``,
which attention modules use to find their key/value cache) is set to the new
one. The removal is a step of the pruning plan, so ``pruneframe.state_dict`` /
``pruneframe.load_state_dict`` replay it on a fresh model. A dependency graph
built before names modules that may be gone: build it again afterwards.
"""
from __future__ import annotations

import functools
import re
from typing import Any, Iterable

import attrs
from torch import nn

from .. import plan
from ..errors import ModelStopsRunningError, PruningError
from ..graph.transaction import Transaction
from ..progress import bar
from ..registry import Registry, get_registry
from ..runtime import Forward, default_forward, model_run, runs
from ..wrappers import unwrap

CONTAINERS = (nn.ModuleList, nn.Sequential)
_HISTORY = "_pruneframe_depth"  # on a layer list: the original positions of its blocks after each removal
# an integer attribute that holds its block's position in every block is renumbered only if its name says it is an index
_INDEX_NAME = re.compile(r"idx|index|layer|position|number|^id$|_id$")


@attrs.frozen
class LayerList:
    """A stack of repeated blocks: its name in the model, the container, and the positions that may be removed."""

    name: str
    container: nn.Module = attrs.field(eq=False, repr=False)
    removable: tuple[int, ...]

    def block_name(self, position: int) -> str:
        """The model's name for the block at ``position``."""
        key = list(self.container._modules)[position]
        return f"{self.name}.{key}" if self.name else key

    def __len__(self) -> int:
        return len(self.container)


@attrs.frozen
class LayerScore:
    """One block's importance: its name, its layer list, its position there, and the score (higher matters more)."""

    name: str
    layer_list: str
    position: int
    score: float


def _layout(block: nn.Module) -> tuple[Any, ...]:
    return (type(block), tuple(n for n, _ in block.named_parameters(remove_duplicate=False)),
            tuple(n for n, _ in block.named_buffers(remove_duplicate=False)))


def layer_lists(model: nn.Module) -> list[LayerList]:
    """Every layer list of ``model`` (see the module docstring), in module order; nested ones (a stage's blocks) too."""
    model = unwrap(model)
    found = []
    for name, module in model.named_modules():
        if not isinstance(module, CONTAINERS) or len(module) < 2:
            continue
        blocks = list(module._modules.values())
        layouts = [_layout(b) if b is not None and b._modules else None for b in blocks]
        removable = tuple(i for i, lay in enumerate(layouts) if lay is not None and layouts.count(lay) > 1)
        if removable:
            found.append(LayerList(name, module, removable))
    return found


def position_history(container: nn.Module) -> list[list[int]]:
    """The blocks' original positions, before any removal and after each one (``[[0, 1, 2, 3], [0, 2, 3]]``).

    Plugins read it to shorten per-layer settings (a config's ``layer_types``) the same way as the blocks.
    """
    history = container.__dict__.get(_HISTORY)
    if history is None:
        return [list(range(len(container)))]
    return [list(state) for state in history]


def _numbered(container: nn.Module) -> bool:
    return list(container._modules) == [str(i) for i in range(len(container._modules))]


def _position_attributes(blocks: list[nn.Module]) -> list[tuple[str, str, int]]:
    """(submodule path, attribute, offset) of the integers that hold every block's position (plus a fixed 0 or 1)."""
    if len(blocks) < 2:
        return []
    found = []
    for path, sub in blocks[0].named_modules():
        for attr, value in vars(sub).items():
            if type(value) is not int or value not in (0, 1) or attr.startswith("_") or not _INDEX_NAME.search(attr):
                continue
            offset = value
            if all(_int_at(block, path, attr) == k + offset for k, block in enumerate(blocks)):
                found.append((path, attr, offset))
    return found


def _int_at(block: nn.Module, path: str, attr: str) -> int | None:
    try:
        sub = block.get_submodule(path)
    except AttributeError:
        return None
    value = vars(sub).get(attr)
    return value if type(value) is int else None


def remove_positions(container: nn.Module, positions: Iterable[int]) -> None:
    """Remove the blocks at ``positions`` from ``container`` and renumber the rest (names, position attributes, history).

    The primitive ``remove_layers`` and plan replay share; it checks nothing, so call those instead.
    """
    gone = set(positions)
    blocks = list(container._modules.items())
    follow = _position_attributes([b for _, b in blocks])
    history = position_history(container)
    kept = [(key, b) for k, (key, b) in enumerate(blocks) if k not in gone]
    numbered = _numbered(container)
    container._modules.clear()
    container._modules.update((str(k) if numbered else key, b) for k, (key, b) in enumerate(kept))
    for new, (_, block) in enumerate(kept):
        for path, attr, offset in follow:
            vars(block.get_submodule(path))[attr] = new + offset
    container.__dict__[_HISTORY] = [*history, [p for k, p in enumerate(history[-1]) if k not in gone]]


def _describe(item: Any) -> str:
    if isinstance(item, nn.Module):
        return f"a {type(item).__name__}"
    return repr(item)


def _choose(model: nn.Module, lists: list[LayerList], layers: Any) -> dict[str, tuple[LayerList, list[int]]]:
    """Per layer list name, (the list, the positions to remove); raises ValueError/TypeError naming the bad item."""
    if isinstance(layers, (str, int, nn.Module, LayerScore)):
        layers = [layers]
    try:
        items = list(layers)
    except TypeError:
        raise TypeError(f"remove_layers takes a block or a list of blocks (modules, names such as 'model.layers.3', "
                        f"positions, or LayerScores of rank_layers), not a {type(layers).__name__}") from None
    where = {id(block): (ll, k) for ll in lists for k, block in enumerate(ll.container._modules.values())}
    names = {id(m): n for n, m in model.named_modules()}
    listed = ", ".join(f"{ll.name or '(model)'} ({len(ll)} blocks)" for ll in lists) or "none"
    chosen: dict[str, tuple[LayerList, list[int]]] = {}
    spelled: dict[tuple[str, int], Any] = {}
    for item in items:
        block = _block_of(model, lists, item, listed)
        found = where.get(id(block))
        if found is None:
            _not_a_block(block, item, names, lists, listed)
        ll, k = found
        if k not in ll.removable:
            keep = ", ".join(str(p) for p in ll.removable)
            raise ValueError(f"{ll.block_name(k)} ({type(block).__name__}) differs in layout from every other block of "
                             f"{ll.name or '(model)'} (it adds or lacks parameters, e.g. a downsampling projection), so "
                             f"removing it would change the shapes the next block sees; removable positions: {keep}")
        if (ll.name, k) in spelled:
            raise ValueError(f"{ll.block_name(k)} is named twice ({_describe(spelled[(ll.name, k)])} and "
                             f"{_describe(item)}); name each block once")
        spelled[(ll.name, k)] = item
        chosen.setdefault(ll.name, (ll, []))[1].append(k)
    for ll, positions in chosen.values():
        if len(positions) >= len(ll):
            raise ValueError(f"this would remove all {len(ll)} blocks of {ll.name or '(model)'}; keep at least one")
        positions.sort()
    return chosen


def _not_a_block(block: nn.Module, item: Any, names: dict[int, str], lists: list[LayerList], listed: str) -> None:
    name = names.get(id(block))
    if name is None:
        raise ValueError(f"{_describe(item)} is not part of this model; pass its blocks or their names, such as "
                         f"{lists[0].block_name(0)!r}" if lists else f"{_describe(item)} is not part of this model")
    container = next((ll for ll in lists if ll.container is block), None)
    if container is not None:
        raise ValueError(f"{name or '(model)'} is a layer list, not a block; name the blocks to remove, such as "
                         f"{container.block_name(0)!r}")
    raise ValueError(f"{name or '(model)'} ({type(block).__name__}) is not a block of a layer list, so it cannot be "
                     f"removed; the model's layer lists: {listed}")


def _block_of(model: nn.Module, lists: list[LayerList], item: Any, listed: str) -> nn.Module:
    if isinstance(item, LayerScore):
        item = item.name
    if isinstance(item, nn.Module):
        return item
    if isinstance(item, bool) or not isinstance(item, (str, int)):
        raise TypeError(f"remove_layers: {item!r} ({type(item).__name__}) is not a block: pass modules, names such as "
                        f"'model.layers.3', positions, or LayerScores of rank_layers")
    if isinstance(item, int):
        if len(lists) != 1:
            raise ValueError(f"position {item} is ambiguous: the model has {len(lists)} layer lists ({listed}); "
                             "name the blocks instead, e.g. 'encoder.layers.3'")
        only = lists[0]
        if not -len(only) <= item < len(only):
            raise ValueError(f"position {item} is out of range: {only.name or '(model)'} has {len(only)} blocks")
        return only.container[item]
    try:
        return model.get_submodule(item)
    except AttributeError:
        raise ValueError(f"the model has no module {item!r}; its layer lists: {listed}") from None


def check_layers(model: nn.Module, layers: Any) -> list[str]:
    """The names of the blocks ``remove_layers(model, layers)`` would remove, checked as it checks them; nothing changes."""
    inner = unwrap(model, pruning=True)
    return [ll.block_name(k) for ll, positions in _choose(inner, layer_lists(inner), layers).values() for k in positions]


def removable_count(model: nn.Module) -> int:
    """How many blocks can go at most: every removable block, but each layer list keeps one."""
    return sum(min(len(ll.removable), len(ll) - 1) for ll in layer_lists(model))


def original_names(model: nn.Module) -> dict[str, str]:
    """Each module's name now -> its name before any removal (a kept block was renumbered: ``layers.2`` -> ``layers.3``)."""
    model = unwrap(model)
    found = {"": ""}
    for name, module in model.named_modules():
        before = found[name]
        history = module.__dict__.get(_HISTORY)
        numbered = history is not None and _numbered(module)
        for key, child in module._modules.items():
            if child is None:
                continue
            old = str(history[-1][int(key)]) if numbered else key
            found.setdefault(f"{name}.{key}" if name else key, f"{before}.{old}" if before else old)
    return found


def remove_layers(model: nn.Module, layers: Any, *, example_inputs: Any = None, forward_fn: Forward | None = None,
                  registry: Registry | None = None) -> list[str]:
    """Remove whole blocks from ``model``'s layer lists; returns their names (as they were). See the module docstring.

    ``layers``: blocks as modules, names (``"model.layers.3"``), positions (when the model has a single layer
    list) or ``LayerScore`` s. With ``example_inputs`` the model is run afterwards (in eval mode, left as it was)
    and the removal is undone if it no longer runs. ``registry``: whose fix-ups run (default: the installed plugins').
    """
    inner = unwrap(model, pruning=True)
    lists = layer_lists(inner)
    chosen = _choose(inner, lists, layers)
    if not chosen:
        return []
    removed = [ll.block_name(k) for ll, positions in chosen.values() for k in positions]
    registry = registry or get_registry(inner)
    _, fixups = registry.module_hooks(inner)
    transaction = Transaction([ll.container for ll, _ in chosen.values()] + [m for m, _ in fixups])
    # the innermost lists first: a block's name is recorded before removals in an enclosing list renumber it
    ordered = sorted(chosen.values(), key=lambda pair: -pair[0].name.count("."))
    recorded = 0
    try:
        for ll, positions in ordered:
            transaction.run(f"removing blocks {positions} of {ll.name or '(model)'}",
                            functools.partial(remove_positions, ll.container, positions))
            plan.record(inner, [plan.depth_entry(ll.name, positions)])
            recorded += 1
        if example_inputs is not None:
            broken = runs(inner, example_inputs, forward_fn, shapes_only=False, eval_mode=True)
            if broken is not None:
                transaction.fail(ModelStopsRunningError(
                    f"after removing {', '.join(removed)} the model no longer runs on the example inputs ({broken}); "
                    "it was undone, the model is as it was. Those blocks change the shape of what flows through "
                    "them: keep them."))
        _, after = registry.module_hooks(inner)
        for module, entry in after:
            transaction.run(f"the fix-up {entry.name!r} of plugin {entry.plugin!r} on {type(module).__name__}",
                            functools.partial(entry.function, module))
    except PruningError:
        for _ in range(recorded):
            plan.forget_last(inner)
        raise
    return removed


def rank_layers(model: nn.Module, batches: Iterable[Any], *, importance: Any = None, forward_fn: Forward | None = None,
                progress: bool = False) -> list[LayerScore]:
    """Score every block of ``model``'s layer lists on calibration ``batches``; ``LayerScore`` s, least important first.

    ``importance`` defaults to ``BlockInfluenceImportance()`` (pass one with ``dim=`` or ``layer_lists=`` to choose).
    The batches run in eval mode without gradients, each through ``forward_fn(model, batch)`` (default: a dict is
    keyword inputs, a tuple positional ones); the model is left exactly as it was.
    """
    from ..importance.block_influence import BlockInfluenceImportance

    imp = BlockInfluenceImportance() if importance is None else importance
    if not isinstance(imp, BlockInfluenceImportance):
        raise TypeError(f"rank_layers scores blocks with a BlockInfluenceImportance, not a {type(imp).__name__}")
    if isinstance(batches, (dict, str)) or not isinstance(batches, Iterable) or hasattr(batches, "shape"):
        raise TypeError(f"rank_layers takes an iterable of batches (a list, a DataLoader), not a {type(batches).__name__}: "
                        "for one batch x, pass [x]")
    inner = unwrap(model)
    if not layer_lists(inner):
        raise ValueError(f"{type(inner).__name__} has no layer list (a ModuleList or Sequential of at least two blocks "
                         "of one class and layout), so there are no layers to rank")
    forward = forward_fn or default_forward
    total = len(batches) if hasattr(batches, "__len__") else None
    imp.reset()
    seen = 0
    with (bar("scoring layers", total=total, enabled=progress, unit="batch") as progress_bar,
          model_run(inner, None, shapes_only=False, eval_mode=True), imp.compute_importance(inner)):
        for batch in batches:
            forward(inner, batch)
            seen += 1
            progress_bar.update()
    if not seen:
        raise ValueError("rank_layers got no batches: pass a non-empty list or DataLoader of calibration batches")
    return imp.ranking()


__all__ = ["LayerList", "LayerScore", "check_layers", "layer_lists", "original_names", "position_history", "rank_layers",
           "removable_count", "remove_layers", "remove_positions"]
