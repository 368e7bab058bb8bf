"""What a prune changed, what it left whole and why, and a graph's groups: the records and their terminal tables.

Example::

    from pruneframe.app.report import layer_sizes, print_prune_report

    snapshot = layer_sizes(model)                  # before
    pruner = pruneframe.pruner.MetaPruner(model, example_inputs, importance, pruning_ratio=0.5)
    pruner.step()
    print_prune_report(snapshot, model, pruner)    # the layers whose sizes changed, then the ones left whole and why
"""
from __future__ import annotations

import sys
from typing import Any, Iterable, Sequence, TextIO

import attrs
import torch

from ..graph import DependencyGraph, Group
from ..graph.records import KeptWhole
from ..graph.node import Space
from ..pruner.depth import original_names
from ..wrappers import unwrap

MODEL = "(model)"  # how the model itself (module name "") is shown
WIDTH = 110  # lines of grouped names wrap here
UNTOUCHED = "prunable, but no prune removed any of its channels"
SHOWN_PER_REASON = 12  # names shown under one reason in the grouped view
CHOSE_NONE = "prunable, but the pruner chose none of its channels (the pruning ratio, round_to or a global ranking)"


# --- sizes before and after ---------------------------------------------------------------
def _is_size(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return (isinstance(value, (tuple, list)) and bool(value)
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value))


def _sizes_of(obj: Any) -> dict[str, Any]:
    """The public int (or tuple-of-int) attributes of ``obj``: out_channels, num_heads, normalized_shape, hidden_size, ..."""
    return {k: tuple(v) if isinstance(v, (tuple, list)) else v
            for k, v in vars(obj).items() if not k.startswith("_") and _is_size(v)}


@attrs.frozen
class LayerSizes:
    """One layer's sizes at one moment: its int attributes and the shapes of its own parameters and buffers."""

    type: str
    sizes: dict[str, Any]
    tensors: dict[str, tuple[int, ...]]
    container: bool  # it has submodules: its own tensors (a class token) are not described by its int attributes


@attrs.frozen
class SizeSnapshot:
    """Every layer's sizes at one moment, by module name in ``named_modules`` order (``layer_sizes(model)``).

    ``originals``: each name then -> its name before any ``remove_layers`` (so a later removal's renumbering can be followed).
    """

    layers: dict[str, LayerSizes]
    originals: dict[str, str] = attrs.field(factory=dict)


def layer_sizes(model: Any) -> SizeSnapshot:
    """The sizes of every layer of ``model`` now; take it before a prune and pass it to ``layer_table`` after.

    A Hugging Face config held by a module is recorded too, as ``config`` (or ``<module>.config``).
    """
    model = unwrap(model)
    layers: dict[str, LayerSizes] = {}
    configs: set[int] = set()
    for name, module in model.named_modules():
        own = [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
        tensors = {k: tuple(t.shape) for k, t in own if t is not None}
        layers[name] = LayerSizes(type(module).__name__, _sizes_of(module), tensors, next(module.children(), None) is not None)
        config = getattr(module, "config", None)
        if config is not None and callable(getattr(config, "to_dict", None)) and id(config) not in configs:
            configs.add(id(config))
            layers.setdefault(f"{name}.config" if name else "config", LayerSizes(type(config).__name__, _sizes_of(config), {}, False))
    return SizeSnapshot(layers, original_names(model))


def _show(value: Any) -> str:
    return "(none)" if value is None else str(value)


@attrs.frozen
class SizeChange:
    """One size of a layer before and after (None: it did not exist then)."""

    name: str
    before: Any
    after: Any

    def __str__(self) -> str:
        return f"{self.name} {_show(self.before)} -> {_show(self.after)}"


@attrs.frozen
class LayerChange:
    """One layer's sizes that changed; ``status`` is "changed", "unchanged", "removed" or "added"."""

    name: str
    type: str
    status: str
    changes: tuple[SizeChange, ...] = attrs.field(default=(), converter=tuple)


def _diff(before: dict[str, Any], after: dict[str, Any]) -> list[SizeChange]:
    keys = list(dict.fromkeys([*before, *after]))
    return [SizeChange(k, before.get(k), after.get(k)) for k in keys if before.get(k) != after.get(k)]


def _names_now(snapshot: SizeSnapshot, model: Any) -> dict[str, str]:
    """Each snapshot name -> the layer's name in ``model`` now, following ``remove_layers``' renumbering (gone: left out)."""
    now_of = {before: now for now, before in original_names(model).items()}
    found = {}
    for name in snapshot.layers:
        owner, suffix = name, ""
        if name not in snapshot.originals and (name == "config" or name.endswith(".config")):  # a config, under its module
            owner, suffix = name[:-len("config")].rstrip("."), "config"
        now = now_of.get(snapshot.originals.get(owner, owner))
        if now is not None:
            found[name] = ".".join(part for part in (now, suffix) if part)
    return found


def layer_changes(snapshot: SizeSnapshot, model: Any, all_layers: bool = False) -> list[LayerChange]:
    """The layers whose sizes differ from ``snapshot`` (every layer with ``all_layers``), in ``named_modules`` order.

    A layer's size attributes are compared (``out_channels 64 -> 32``); the
    shapes of its own tensors are listed too where its attributes do not
    describe them: a container's parameters (a class token) or a layer whose
    sizes live only in its tensors (an RMSNorm weight). After ``remove_layers``
    a kept layer is compared under its new name (``layers.3`` -> ``layers.2``)
    and a removed block is one "removed" row, under its name in the snapshot.
    """
    if not isinstance(snapshot, SizeSnapshot):
        raise TypeError(f"layer_changes takes the snapshot layer_sizes(model) made before the prune, not {type(snapshot).__name__}")
    now = layer_sizes(model).layers
    root_before, root_now = snapshot.layers.get(""), now.get("")
    if root_before is not None and root_now is not None and root_before.type != root_now.type:
        raise ValueError(f"the snapshot was taken of a {root_before.type}, but this model is a {root_now.type}: "
                         "take layer_sizes(model) of this model before pruning it")
    names_now = _names_now(snapshot, model)
    rows: list[LayerChange] = []
    gone: list[str] = []
    for name, before in snapshot.layers.items():
        after = now.get(names_now[name]) if name in names_now else None
        if after is None:
            if not any(name.startswith(g + ".") for g in gone if g):  # a removed block stands for its submodules
                rows.append(LayerChange(name, before.type, "removed"))
            gone.append(name)
            continue
        name = names_now[name]
        changes = _diff(before.sizes, after.sizes)
        if before.container or not changes:
            changes += _diff(before.tensors, after.tensors)
        if before.type != after.type:
            changes.insert(0, SizeChange("type", before.type, after.type))
        if changes or all_layers:
            rows.append(LayerChange(name, after.type, "changed" if changes else "unchanged", changes))
    kept = set(names_now.values())
    rows += [LayerChange(name, after.type, "added") for name, after in now.items() if name not in kept]
    return rows


_STATUS = {"removed": "removed (named as before the removal; the kept blocks are renumbered)"}


def layer_table(snapshot: SizeSnapshot, model: Any, all_layers: bool = False) -> str:
    """An aligned table of the layers whose sizes changed since ``snapshot`` (of every layer with ``all_layers``)."""
    rows = layer_changes(snapshot, model, all_layers)
    changed = sum(r.status != "unchanged" for r in rows)
    title = f"Layers changed: {changed} of {len(snapshot.layers)}"
    if not rows:
        return title + " (nothing was pruned)"
    body = [(r.name or MODEL, r.type, ", ".join(map(str, r.changes)) or _STATUS.get(r.status, r.status)) for r in rows]
    return title + "\n" + format_table(("layer", "type", "before -> after"), body)


def format_table(head: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Rows under a header, in columns as wide as their widest cell, ruled like ``print(group)``'s table."""
    rows = [tuple(map(str, r)) for r in rows]
    widths = [max(len(r[i]) for r in [tuple(head), *rows]) for i in range(len(head))]
    line = "+".join("-" * (w + 2) for w in widths)

    def fmt(row: Sequence[str]) -> str:
        return (" " + " | ".join(c.ljust(w) for c, w in zip(row, widths))).rstrip()

    return "\n".join([line, fmt(head), line, *(fmt(r) for r in rows), line])


# --- names, shortened -------------------------------------------------------------------------
def _numbers(values: list[int]) -> str:
    """0,1 / 0-3,5: a sorted set of ints, runs of three or more as ranges."""
    values = sorted(set(values))
    parts, start = [], 0
    for k in range(1, len(values) + 1):
        if k == len(values) or values[k] != values[k - 1] + 1:
            run = values[start:k]
            parts += [f"{run[0]}-{run[-1]}"] if len(run) >= 3 else [str(v) for v in run]
            start = k
    return ",".join(parts)


def compact_names(names: Iterable[str]) -> list[tuple[str, int]]:
    """Names that differ only in one numbered part, written once, with how many names each stands for.

    ``layer1.0.conv1, layer1.1.conv1`` -> ``layer1.{0,1}.conv1``; repeated blocks
    of a transformer (``model.layers.{0-31}.mlp.up_proj``) collapse the same way.
    """
    items: list[tuple[list[str], int]] = [(name.split("."), 1) for name in dict.fromkeys(names)]
    for position in range(max((len(parts) for parts, _ in items), default=0)):
        alike: dict[tuple, list[tuple[list[str], int]]] = {}
        for parts, count in items:
            if position < len(parts) and parts[position].isdigit():
                key: tuple = (len(parts), *parts[:position], "#", *parts[position + 1:])
            else:
                key = ("=", *parts)
            alike.setdefault(key, []).append((parts, count))
        items = []
        for same in alike.values():
            parts = same[0][0]
            if len(same) > 1:
                parts = [*parts[:position], "{" + _numbers([int(p[position]) for p, _ in same]) + "}", *parts[position + 1:]]
            items.append((parts, sum(count for _, count in same)))
    return [(".".join(parts), count) for parts, count in items]


def shorten_names(names: Sequence[str], width: int = 80) -> str:
    """``names`` compacted and joined with commas, cut to about ``width`` characters with how many more there are."""
    compact = compact_names(names)
    shown: list[str] = []
    used = 0
    for k, (text, _) in enumerate(compact):
        rest = sum(count for _, count in compact[k:])
        if shown and used + len(text) + 2 > width:
            return ", ".join(shown) + f", ... ({rest} more)"
        shown.append(text)
        used += len(text) + 2
    return ", ".join(shown)


# --- what was left whole, and why -------------------------------------------------------------
def _graph_of(source: Any) -> tuple[DependencyGraph, Any]:
    """The graph behind ``source`` (a DependencyGraph or a pruner with ``.DG``), and the pruner if it is one."""
    if isinstance(source, DependencyGraph):
        return source, None
    graph = getattr(source, "DG", None)
    if isinstance(graph, DependencyGraph):
        return graph, source
    raise TypeError(f"pass the DependencyGraph or the pruner (e.g. MetaPruner) that pruned the model, not {type(source).__name__}")


def _sides(graph: DependencyGraph) -> list[Space]:
    """Every layer side with channels, in the graph's order; a batch norm's input side is its output side."""
    found, seen = [], set()
    for node in graph.module2node.values():
        if id(node) in seen:
            continue
        seen.add(id(node))
        for space in (node.out_space, node.in_space):
            if space is not None and space.size and not (space.kind == "in" and node.in_out_coupled):
                found.append(space)
    return found


def kept_whole(source: Any) -> list[KeptWhole]:
    """Every layer side a prune left whole, with why, from the ``DependencyGraph`` or the pruner that pruned.

    The reasons: what the graph says blocks the channels (``DependencyGraph.kept_whole``:
    a model input or output, an op no plugin handles, an ignored layer, a shared
    parameter, a plugin's hint); what the pruner decided, for a pruner that records
    the groups it left whole as ``left_whole`` (``(group, reason)`` pairs: a group
    the importance cannot score, heads tied together, a size the model's code keeps);
    and, for a side that could have been pruned, that nothing chose its channels.
    """
    graph, pruner = _graph_of(source)
    ignored = list(getattr(pruner, "ignored_layers", None) or ())
    reasons: dict[Space, list[str]] = {}
    by_side = {(s.node.name, s.kind): s for s in _sides(graph)}
    for record in graph.kept_whole(ignored_layers=ignored):
        space = by_side.get((record.name, record.kind))
        if space is not None:
            reasons[space] = list(record.reasons)
    listed = {id(s) for s in by_side.values()}
    for group, reason in getattr(pruner, "left_whole", None) or ():  # what the pruner decided, where it records it
        for space, _ in group.touched:
            if id(space) in listed and space.current_size == space.size and reason not in reasons.get(space, []):
                reasons.setdefault(space, []).append(reason)
    untouched = [s for s in by_side.values() if s not in reasons and s.current_size == s.size]
    if untouched:
        if pruner is None:
            for space in untouched:
                reasons[space] = [UNTOUCHED]
        else:
            types = tuple(getattr(pruner, "root_module_types", None) or ()) or None
            grouped = {id(space) for group in graph.get_all_groups(ignored_layers=ignored, root_module_types=types)
                       for space, _ in group.touched}
            no_root = ("the pruner ranks the channels of root layers ("
                       + ", ".join(t.__name__.lstrip("_") for t in types or ()) + ") and none of them holds these")
            for space in untouched:
                reasons[space] = [CHOSE_NONE if id(space) in grouped else no_root]
    return [KeptWhole(s.node.name, s.node.type, s.kind, s.current_size, tuple(reasons[s])) for s in by_side.values() if s in reasons]


def _wrap(items: Sequence[str], indent: str) -> list[str]:
    """``items`` joined with commas into lines of at most ``WIDTH`` characters, breaking only between items."""
    lines, line = [], ""
    for k, item in enumerate(items):
        text = item + ("," if k < len(items) - 1 else "")
        if line and len(indent) + len(line) + 1 + len(text) > WIDTH:
            lines.append(indent + line)
            line = text
        else:
            line = f"{line} {text}" if line else text
    return lines + [indent + line] if line else lines


def kept_whole_table(records: Sequence[KeptWhole], all_layers: bool = False) -> str:
    """The layer sides left whole: grouped under each reason, names shortened; one aligned row each with ``all_layers``."""
    title = f"Kept whole: {len(records)} layer side{'' if len(records) == 1 else 's'}"
    if not records:
        return title
    if all_layers:
        rows = [(r.name or MODEL, r.type, r.kind, str(r.channels), "; ".join(r.reasons)) for r in records]
        return title + "\n" + format_table(("layer", "type", "side", "channels", "why"), rows)
    by_reason: dict[str, list[str]] = {}
    for r in records:
        for reason in r.reasons:
            by_reason.setdefault(reason, []).append(f"{r.name or MODEL} ({r.kind})")
    lines = [title]
    for reason, names in by_reason.items():
        lines.append(f"  {reason} ({len(names)}):")
        shown = [text for text, _ in compact_names(names)]
        if len(shown) > SHOWN_PER_REASON:  # the whole list is one flag away
            shown = [*shown[:SHOWN_PER_REASON], f"and {len(shown) - SHOWN_PER_REASON} more (all_layers=True / --all-layers lists them)"]
        lines += _wrap(shown, "    ")
    return "\n".join(lines)


def print_prune_report(snapshot: SizeSnapshot, model: Any, source: Any, file: TextIO | None = None,
                       all_layers: bool = False) -> None:
    """Print what the prune changed since ``snapshot`` (``layer_table``) and what it left whole, with why (``kept_whole``).

    ``source`` is the ``DependencyGraph`` or the pruner that pruned ``model``.
    """
    graph, _ = _graph_of(source)
    if graph.model is not None and graph.model is not unwrap(model):
        raise ValueError("the graph (or pruner) given prunes another model: pass the one that pruned this model")
    out = sys.stdout if file is None else file
    print(layer_table(snapshot, model, all_layers), file=out)
    print(file=out)
    print(kept_whole_table(kept_whole(source), all_layers), file=out)


# --- a graph's groups -----------------------------------------------------------------------
@attrs.frozen
class GroupMember:
    """One layer side of a group: its name, type, "out" or "in", and how many of its channels the group holds."""

    name: str
    type: str
    kind: str
    channels: int


@attrs.frozen(eq=False)
class GroupSummary:
    """One group of a graph, as ``pruneframe inspect`` shows it.

    ``status`` is "prunable", "blocked" (``reasons`` say why) or "no root" (no
    layer holds these channels as its own outputs, so ``get_all_groups`` leaves
    them out; ``get_pruning_group`` still reaches them). ``blocks`` is how many
    parts the root's channels fall into that can only go whole (a channel each
    for a convolution; a head, or a head with its grouped-query partners, for
    attention).
    """

    root: str
    type: str
    kind: str
    channels: int
    blocks: int
    status: str
    reasons: tuple[str, ...]
    members: tuple[GroupMember, ...]
    group: Group = attrs.field(repr=False)


def _summary(group: Group, status: str) -> GroupSummary:
    root, space = group.root, group.root_space
    assert root is not None and space is not None
    members = tuple(GroupMember(dep.target.name, dep.target.type, dep.kind, len(idxs)) for dep, idxs in group)
    return GroupSummary(root.name, root.type, space.kind, len(group.root_idxs), len(group.root_blocks()), status,
                        tuple(group.blocked_reasons), members, group)


def channel_groups(graph: DependencyGraph) -> list[GroupSummary]:
    """Every channel of the graph in exactly one group: ``get_all_groups()``'s first, then the blocked and the rootless ones."""
    summaries = [_summary(group, "prunable") for group in graph.get_all_groups()]
    covered: dict[int, torch.Tensor] = {}

    def cover(group: Group) -> None:
        for space, traced in group.touched:
            covered.setdefault(id(space), torch.zeros(space.size, dtype=torch.bool))[traced] = True

    for s in summaries:
        cover(s.group)
    for space in _sides(graph):
        left = space.alive & ~covered.get(id(space), torch.zeros(space.size, dtype=torch.bool))
        if not bool(left.any()):
            continue
        node = space.node
        pruning_fn = node.pruner.prune_in_channels if space.kind == "in" else node.pruner.prune_out_channels
        group = graph.get_pruning_group(node.module, pruning_fn, space.current_positions(left.nonzero().flatten()).tolist())
        cover(group)
        summaries.append(_summary(group, "blocked" if group.blocked_reasons else "no root"))
    return summaries


def member_names(summary: GroupSummary, width: int = 80) -> str:
    """A group's members, shortened: ``out: conv1, bn1, layer1.{0,1}.conv2; in: layer1.{0,1}.conv1``."""
    parts = []
    for kind in ("out", "in"):
        names = [m.name or MODEL for m in summary.members if m.kind == kind]
        if names:
            parts.append(f"{kind}: " + shorten_names(names, width))
    return "; ".join(parts)


def groups_table(summaries: Sequence[GroupSummary], width: int = 50) -> str:
    """One aligned row per group: root, kind, channels, blocks, status, member count and names (shortened)."""
    rows = [(str(k), s.root or MODEL, s.type, s.kind, str(s.channels), str(s.blocks), s.status, str(len(s.members)),
             member_names(s, width)) for k, s in enumerate(summaries)]
    return format_table(("#", "root", "type", "kind", "channels", "blocks", "status", "members", "layers"), rows)


__all__ = ["GroupMember", "GroupSummary", "KeptWhole", "LayerChange", "LayerSizes", "SizeChange", "SizeSnapshot",
           "channel_groups", "compact_names", "format_table", "groups_table", "kept_whole", "kept_whole_table",
           "layer_changes", "layer_sizes", "layer_table", "member_names", "print_prune_report", "shorten_names"]
