"""``DependencyGraph``: the traced coupling of a model's channels, and groups drawn from it.

Example::

    DG = pruneframe.DependencyGraph().build_dependency(model, example_inputs=torch.randn(1, 3, 32, 32))
    group = DG.get_pruning_group(model.conv1, pruneframe.prune_conv_out_channels, idxs=[0, 5])
    if DG.check_pruning_group(group):
        group.prune()
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
from torch import nn

from .components import ComponentIndex, resolve_slice_ties, touching
from .errors import PruningError
from .group import Dependency, Group, GroupItem, IndexMapping, PruneRecord, function_name
from .layer_pruner import counts_as, validate_idxs
from .node import Node, Space
from .registry import Registry, get_registry
from .tracer import TraceResult, runs, single_threaded, trace


def channel_kind(pruning_fn: Callable[..., Any]) -> str:
    """"out" or "in": which channels a pruning function removes, read from its name."""
    name = function_name(pruning_fn)
    if "out_channels" in name or name.endswith("_out"):
        return "out"
    if "in_channels" in name or name.endswith("_in"):
        return "in"
    raise ValueError(
        f"cannot tell whether {name!r} prunes output or input channels; pass a function such as "
        "pruneframe.prune_conv_out_channels or a pruner's prune_out_channels / prune_in_channels"
    )


class ModuleHints:
    """What plugins' module hints say a model's code fixes; handed to each hint function."""

    def __init__(self) -> None:
        self.kept: list[tuple[nn.Module, str, str]] = []

    def keep_out_channels(self, layer: nn.Module, reason: str) -> None:
        """``layer``'s output channels must all stay, because of ``reason``."""
        self.kept.append((layer, "out", reason))

    def keep_in_channels(self, layer: nn.Module, reason: str) -> None:
        """``layer``'s input channels must all stay, because of ``reason``."""
        self.kept.append((layer, "in", reason))


class DependencyGraph:
    """The channel coupling of one model, built from one traced forward pass."""

    def __init__(self, registry: Registry | None = None):
        self._registry = registry
        self._customized: dict[type, Any] = {}
        self.model: nn.Module | None = None
        self.module2node: dict[Any, Node] = {}
        self.ignored_layers: list[nn.Module] = []
        self._trace: TraceResult | None = None
        self._history: list[list[PruneRecord]] = []

    @property
    def registry(self) -> Registry:
        if self._registry is None:
            self._registry = get_registry()
        return self._registry

    # --- building -----------------------------------------------------------------
    def register_customized_layer(self, layer_type: type, layer_pruner: Any) -> None:
        """Prune ``layer_type`` (and its subclasses) with ``layer_pruner`` in this graph, above any plugin."""
        if not isinstance(layer_type, type):
            raise TypeError(f"register_customized_layer takes a class such as MyLayer, not {layer_type!r}")
        for method in ("prune_out_channels", "prune_in_channels"):
            if not callable(getattr(layer_pruner, method, None)):
                raise TypeError(
                    f"{layer_pruner!r} has no {method}; subclass pruneframe.pruner.BasePruningFunc and implement it"
                )
        self._customized[layer_type] = layer_pruner

    def build_dependency(
        self,
        model: nn.Module,
        example_inputs: Any,
        forward_fn: Callable[[nn.Module, Any], Any] | None = None,
        output_transform: Callable[[Any], Any] | None = None,
        ignored_layers: Iterable[nn.Module] | None = None,
        unwrapped_parameters: Iterable[tuple[nn.Parameter, int]] | None = None,
        customized_pruners: dict[type, Any] | None = None,
        verbose: bool = True,
        verify_prunes: bool | str = "auto",
    ) -> "DependencyGraph":
        """Trace ``model`` on ``example_inputs`` (a tensor, a tuple/list of positional inputs, or a dict of keyword inputs).

        ``verify_prunes`` decides when ``Group.prune()`` ends by running the model once more on the example inputs
        (shapes only where possible), undoing the prune if it no longer runs: sizes the model's code fixes (a
        literal in a view, expand or split) are invisible to any trace, so such a prune is refused instead of
        breaking the model. ``"auto"`` (the default) runs it for prunes of channels that met an op whose sizes
        the code passed in; ``"always"`` (or True) after every prune; ``"never"`` (or False) not at all.
        """
        if not isinstance(model, nn.Module):
            raise TypeError(f"build_dependency takes an nn.Module, not {type(model).__name__}")
        modes = {"auto": "auto", "always": "always", "never": "never", True: "always", False: "never"}
        if not isinstance(verify_prunes, (bool, str)) or verify_prunes not in modes:
            raise ValueError(f"verify_prunes={verify_prunes!r}: use 'auto', 'always' (True) or 'never' (False)")
        for layer_type, pruner in (customized_pruners or {}).items():
            self.register_customized_layer(layer_type, pruner)
        unwrapped = []
        for item in unwrapped_parameters or ():
            if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], torch.Tensor)):
                raise TypeError(f"unwrapped_parameters takes (parameter, dim) pairs, not {item!r}")
            unwrapped.append((item[0], int(item[1])))
        if self._registry is None:
            self._registry = get_registry(model)  # loads the plugins of the frameworks the model comes from
        self.model = model
        self._example = (example_inputs, forward_fn, modes[verify_prunes])
        self.ignored_layers = list(ignored_layers or ())
        self._history = []
        self._trace = trace(model, example_inputs, self.registry, self._customized, forward_fn, output_transform, unwrapped)
        with single_threaded():
            self._index(model)
        return self

    def _index(self, model: nn.Module) -> None:
        """Nodes, hints, fix-ups and the connected components of the traced couplings."""
        self.module2node = {node.module: node for node in self._trace.nodes if node.kind == "layer"}
        for node in self._trace.nodes:
            if node.kind == "parameter":
                self.module2node[node.module] = node
        self._bases = torch.tensor([s.base for s in self._trace.spaces], dtype=torch.long)
        kept = [(layer, "out", f"{self.module2node[layer].name if layer in self.module2node else layer} is an ignored layer")
                for layer in self.ignored_layers]
        hints = ModuleHints()
        hinted, self._fixups = self.registry.module_hooks(model)
        for module, entry in hinted:
            entry.function(module, hints)
        kept += hints.kept
        n_ids = self._trace.n_ids
        reasons = dict(self._trace.reasons)
        edges = [self._trace.edges]
        for layer, kind, reason in kept:
            node = self.module2node.get(layer)
            space = node.space(kind) if node is not None else None
            if space is not None and space.size:
                reason_id, n_ids = n_ids, n_ids + 1
                reasons[reason_id] = reason
                ids = space.ids()
                edges.append(torch.stack([ids, torch.full_like(ids, reason_id)]))
                edges.append(torch.tensor([[reason_id], [0]]))
        edges = torch.cat(edges, 1)
        # Membership follows couplings only; whether a channel is blocked follows the ties to reasons too.
        # (Blocked channels all meet at id 0: through those ties they would form one meaningless group.)
        is_reason = torch.zeros(n_ids, dtype=torch.bool)
        is_reason[0] = True
        is_reason[list(reasons)] = True
        blocking = is_reason[edges[0]] | is_reason[edges[1]]
        coupling = edges[:, ~blocking]
        self._roots, kept_slices = resolve_slice_ties(n_ids, coupling, self._trace.ties, is_reason)
        reason_edges = edges[:, blocking]
        if kept_slices.numel():
            reason = ("the slices of a product they belong to (e.g. an attention head of q, k and v) "
                      "could vanish in one operand only")
            reason_id, n_ids = n_ids, n_ids + 1
            reasons[reason_id] = reason
            self._roots = torch.cat([self._roots, torch.tensor([reason_id])])
            reason_edges = torch.cat([reason_edges, torch.stack([kept_slices, torch.full_like(kept_slices, reason_id)])], 1)
        self._reasons = reasons
        self._reason_edges = reason_edges
        # Every reason to keep channels is blocked; so is every component tied to one.
        is_reason = torch.cat([is_reason, torch.ones(n_ids - is_reason.numel(), dtype=torch.bool)])
        ends = reason_edges.flatten()
        self._blocked = touching(self._roots, ends[~is_reason[ends]]) | is_reason
        self._components = ComponentIndex(self._roots)
        self._sized_by_code = torch.zeros(n_ids, dtype=torch.bool)
        if self._trace.sized_by_code.numel():  # a prune that moves any of these, moves all of their component
            self._sized_by_code = touching(self._roots, self._trace.sized_by_code)
        self._owned = torch.zeros(n_ids, dtype=torch.bool)
        for space in self._trace.spaces:
            self._owned[space.base:space.base + space.size] = True

    def _require_trace(self) -> TraceResult:
        if self._trace is None:
            raise PruningError("the graph is empty: call build_dependency(model, example_inputs) first")
        return self._trace

    # --- lookups --------------------------------------------------------------------
    def get_pruner_of_module(self, module: nn.Module) -> Any:
        node = self.module2node.get(module)
        return node.pruner if node is not None else self.registry.layer_pruner(type(module), self._customized)

    def is_out_channel_pruning_fn(self, fn: Callable[..., Any]) -> bool:
        return channel_kind(fn) == "out"

    def is_in_channel_pruning_fn(self, fn: Callable[..., Any]) -> bool:
        return channel_kind(fn) == "in"

    def get_out_channels(self, module: Any) -> int | None:
        node = self.module2node.get(module)
        return node.out_space.current_size if node is not None and node.out_space is not None else None

    def get_in_channels(self, module: Any) -> int | None:
        node = self.module2node.get(module)
        if node is None or node.in_space is None:
            return None
        return node.in_space.current_size

    def _node(self, module: Any) -> Node:
        self._require_trace()
        node = self.module2node.get(module)
        if node is None:
            what = type(module).__name__
            raise ValueError(
                f"{what} {('of shape ' + str(tuple(module.shape))) if isinstance(module, torch.Tensor) else ''}is not a node "
                f"of the traced graph: no plugin prunes {what}, or it was not called in the traced forward pass. "
                "Register a pruner with register_customized_layer before build_dependency, or install a plugin for it."
            )
        return node

    def _space_of_ids(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.searchsorted(self._bases, ids, right=True) - 1

    def _map_indices(self, source: Space, target: Space, idxs: Sequence[int]) -> list[int]:
        index = torch.as_tensor(list(idxs), dtype=torch.long)
        members = self._components.members(source.base + source.original_positions(index))
        members = members[members > 0]
        inside = members[(members >= target.base) & (members < target.base + target.size)] - target.base
        return target.current_positions(inside).tolist()

    # --- groups -------------------------------------------------------------------------
    def _handler(self, node: Node, kind: str) -> Callable[..., Any]:
        if node.kind == "parameter":
            return functools.partial(node.pruner.prune_out_channels, dim=node.pruning_dim)
        return node.pruner.prune_out_channels if kind == "out" else node.pruner.prune_in_channels

    def get_pruning_group(self, module: Any, pruning_fn: Callable[..., Any], idxs: Sequence[int]) -> Group:
        """Everything that must be pruned with channels ``idxs`` of ``module``, as a ``Group``."""
        with single_threaded():
            return self._pruning_group(module, pruning_fn, idxs)

    def _pruning_group(self, module: Any, pruning_fn: Callable[..., Any], idxs: Sequence[int]) -> Group:
        node = self._node(module)
        kind = "out" if node.kind == "parameter" else channel_kind(pruning_fn)
        if kind == "in" and node.in_out_coupled and node.in_space is not None and node.in_space.size == 0:
            kind = "out"  # a coupled layer whose inputs carry no channels (Embedding): "in" means its one space
        space = node.space(kind)
        assert space is not None
        index = validate_idxs(module, idxs, space.current_size, f"{node.name} {kind}put channel")
        return self._group(node, kind, pruning_fn, index)

    def _group(self, root: Node, kind: str, trigger: Callable[..., Any], index: torch.Tensor,
               extra_blocked_roots: torch.Tensor | None = None) -> Group:
        trace_ = self._require_trace()
        root_space = root.space(kind)
        assert root_space is not None
        members = self._components.members(root_space.base + root_space.original_positions(index)) if index.numel() else index
        blocked_ids = members[self._blocked[members]]  # product slices included: they may be what is blocked
        members = members[self._owned[members]]  # not id 0 ("blocked") nor the ids of product slices
        member_roots = self._roots[members]
        reasons: list[str] = []
        if blocked_ids.numel():
            u, v = self._reason_edges
            hit = torch.cat([v[torch.isin(u, blocked_ids)], u[torch.isin(v, blocked_ids)]])
            reasons = sorted({self._reasons[int(r)] for r in torch.unique(hit) if int(r) in self._reasons})
            reasons = reasons or ["they are coupled with channels that cannot shrink"]
        if extra_blocked_roots is not None and bool(torch.isin(member_roots, extra_blocked_roots).any()):
            reasons.append("they are coupled with an ignored layer's output channels")
        # members are sorted and every space is one run of ids, so each space's members are one slice: splitting
        # once keeps a group that spans every layer (an LLM's hidden size) linear in its size, not size x layers
        space_ix = self._space_of_ids(members)
        spaces, counts = torch.unique_consecutive(space_ix, return_counts=True)
        items: list[GroupItem] = []
        touched: list[tuple[Space, torch.Tensor]] = []
        root_item: GroupItem | None = None
        for s, in_space in zip(spaces.tolist(), torch.split(members, counts.tolist())):
            space = trace_.spaces[s]
            traced = in_space - space.base
            touched.append((space, traced))
            node = space.node
            if space.kind == "in" and node.in_out_coupled:
                continue  # pruned along with the same layer's output channels
            handler = self._handler(node, space.kind)
            dep = Dependency(trigger, handler, root, node, IndexMapping(self, root_space, space))
            item = GroupItem(dep, space.current_positions(traced).tolist())
            if space is root_space or (node is root and root_item is None and space.kind == "out"):
                root_item = item
            else:
                items.append(item)
        if root_item is not None:
            items.insert(0, root_item)
        return Group(self, items, touched, reasons, index.tolist())

    def _root_blocks(self, node: Node, trigger: Callable[..., Any], idxs: Sequence[int]) -> list[list[int]]:
        kind = "out" if node.kind == "parameter" else channel_kind(trigger)
        space = node.space(kind)
        assert space is not None
        index = torch.as_tensor(list(idxs), dtype=torch.long)
        roots = self._roots[space.base + space.original_positions(index)]
        order = torch.argsort(roots, stable=True)
        _, counts = torch.unique_consecutive(roots[order], return_counts=True)
        return [index[chunk].tolist() for chunk in torch.split(order, counts.tolist())]

    def get_all_groups(self, ignored_layers: Iterable[Any] = (), root_module_types: Iterable[type] | None = None) -> Iterator[Group]:
        """One group per prunable root layer: all its channels that may be pruned, with everything coupled to them.

        Roots are layers of ``root_module_types`` (or whose pruner ``acts_like``
        one of them) or, by default, every layer
        whose output channels are its own (not tied to its input). Channels
        coupled with an ignored layer's output, a model input or output, or an
        unknown op are left out.
        """
        trace_ = self._require_trace()
        with single_threaded():
            groups = list(self._all_groups(trace_, ignored_layers, root_module_types))
        return iter(groups)

    def _all_groups(self, trace_: TraceResult, ignored_layers: Iterable[Any], root_module_types: Iterable[type] | None) -> Iterator[Group]:
        ignored = {id(m) for m in [*ignored_layers, *self.ignored_layers]}
        types = tuple(root_module_types) if root_module_types is not None else None
        ignored_roots = [self._roots[n.out_space.ids()] for n in self.module2node.values()
                         if id(n.module) in ignored and n.out_space is not None and n.out_space.size]
        extra = torch.unique(torch.cat(ignored_roots)) if ignored_roots else torch.empty(0, dtype=torch.long)
        visited = torch.zeros(trace_.n_ids, dtype=torch.bool)
        for node in list(self.module2node.values()):
            if node.kind != "layer" or id(node.module) in ignored or node.out_space is None:
                continue
            if types is not None:
                if not counts_as(node.module, node.pruner, types):
                    continue
            elif node.in_out_coupled:
                continue
            space = node.out_space
            alive = space.alive.nonzero().flatten()
            ids = space.base + alive
            roots = self._roots[ids]
            ok = ~self._blocked[ids] & ~torch.isin(roots, extra) & ~visited[ids]
            if not bool(ok.any()):
                continue
            index = space.current_positions(alive[ok])
            group = self._group(node, "out", node.pruner.prune_out_channels, index)
            visited[self._components.members(ids[ok])] = True
            yield group

    def check_pruning_group(self, group: Group) -> bool:
        """True when ``group`` can be pruned: nothing blocked, no layer emptied."""
        return not group.problems()

    def _check_unchanged(self, nodes: list[Node]) -> None:
        """Refuse to prune from a graph whose model was changed behind its back."""
        for node in nodes:
            space = node.out_space
            if space is None:
                continue
            if node.kind == "parameter":
                actual = node.module.shape[node.pruning_dim]
            else:
                try:
                    actual = node.pruner.get_out_channels(node.module)
                except Exception:  # a user's get_out_channels may be wrong; the trace counts are authoritative
                    continue
            if isinstance(actual, int) and space.size and actual != space.current_size:
                raise PruningError(
                    f"{node.name} ({node.type}) has {actual} output channels but the graph expects {space.current_size}: "
                    "the model was changed outside this graph. Call build_dependency again."
                )

    def _still_runs(self, ids: torch.Tensor) -> str | None:
        """None if the model still runs on the example inputs (or needs no check after pruning ``ids``), else why not."""
        inputs, forward_fn, mode = self._example
        if mode == "never" or self.model is None:
            return None
        if mode == "auto" and not bool(self._sized_by_code[ids].any()):
            return None
        return runs(self.model, inputs, forward_fn, shapes_only=self._require_trace().mode == "shapes")

    # --- history ------------------------------------------------------------------------
    def pruning_history(self) -> list[list[PruneRecord]]:
        """Every group pruned through this graph, in order: per layer, current indices and traced positions."""
        return [list(records) for records in self._history]
