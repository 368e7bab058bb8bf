"""``DependencyGraph``: the traced coupling of a model's channels, and groups drawn from it.

Example::

    DG = pruneframe.DependencyGraph().build_dependency(model, example_inputs=torch.randn(1, 3, 32, 32))
    group = DG.get_pruning_group(model.conv1, pruneframe.prune_conv_out_channels, idxs=[0, 5])
    if DG.check_pruning_group(group):
        group.prune()
"""
from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

import torch
from torch import nn

from ..errors import PruningError
from ..layer_pruner import counts_as, validate_idxs
from ..registry import Registry, get_registry, warn_missing_family_plugins
from ..runtime import heap_frozen, return_freed_memory, runs, single_threaded
from ..wrappers import unwrap
from .apply import PruneApplier
from .couplings import ChannelCoupling
from .dependency import Dependency, GroupItem, IndexMapping, PruneRecord, function_name
from .group import Group
from .hints import ModuleHints
from .node import Node, Space
from .records import ChannelTie, KeptWhole
from .slice_bounds import SliceCheck

if TYPE_CHECKING:
    from ..tracing import TraceResult


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


VERIFY_MODES = {"auto": "auto", "always": "always", "never": "never", True: "always", False: "never"}


class DependencyGraph:
    """The channel coupling of one model, built from one traced forward pass."""

    def __init__(self, registry: Registry | None = None):
        self._registry = registry
        self._customized: dict[type, Any] = {}
        self.model: nn.Module | None = None
        self.module2node: dict[Any, Node] = {}
        self.ignored_layers: list[nn.Module] = []
        self._trace: TraceResult | None = None
        self._coupling: ChannelCoupling | None = None
        self._applier: PruneApplier | None = None

    @property
    def registry(self) -> Registry:
        if self._registry is None:
            self._registry = get_registry(self.model)
        return self._registry

    @property
    def customized_pruners(self) -> dict[type, Any]:
        """The pruners registered on this graph with ``register_customized_layer``, by layer type."""
        return dict(self._customized)

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
        model = unwrap(model, pruning=True)  # torch.compile / DataParallel: the module they hold is what gets pruned
        if not isinstance(verify_prunes, (bool, str)) or verify_prunes not in VERIFY_MODES:
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
            warn_missing_family_plugins(model)
        else:
            self._registry.discover(model)  # classes plugins find by their structure (get_registry does it too)
        self.model = model
        self._example = (example_inputs, forward_fn, VERIFY_MODES[verify_prunes])
        self.ignored_layers = list(ignored_layers or ())
        from ..tracing import trace  # the tracer builds on graph nodes: imported when first used, not with the package

        with heap_frozen():
            self._trace = trace(model, example_inputs, self.registry, self._customized, forward_fn, output_transform, unwrapped,
                                check_slices=self._example[2] != "never")  # slices are checked by the runs after prunes
            return_freed_memory()  # what the trace freed, before the couplings allocate theirs
            with single_threaded():
                self._index(model)
        return self

    def _index(self, model: nn.Module) -> None:
        """Nodes, the hints' and ignored layers' reasons to keep channels, and the coupling components."""
        from ..tracing.recorder import add_parameter_spaces  # like trace: imported when first used

        assert self._trace is not None
        add_parameter_spaces(self._trace, self.registry)
        self.module2node = {node.module: node for node in self._trace.nodes if node.kind == "layer"}
        for node in self._trace.nodes:
            if node.kind == "parameter":
                self.module2node[node.module] = node
        kept = [(layer, "out", f"{self.module2node[layer].name if layer in self.module2node else layer} is an ignored layer")
                for layer in self.ignored_layers]
        hints = ModuleHints()
        hinted, fixups = self.registry.module_hooks(model)
        for module, entry in hinted:
            entry.function(module, hints)
        kept += hints.kept
        spaces = []
        for layer, kind, reason in kept:
            node = self.module2node.get(layer)
            space = node.space(kind) if node is not None else None
            if space is not None:
                spaces.append((space, reason))
        pairs = []
        for a, kind_a, b, kind_b, reason in hints.coupled:
            found = [self._space_of(a, kind_a), self._space_of(b, kind_b)]
            if None not in found and found[0].size == found[1].size:
                pairs.append((found[0], found[1]))
                continue
            why = "one of them is not a node of the graph" if None in found else (
                f"they have {found[0].size} and {found[1].size} channels")
            for space in found:
                if space is not None:
                    spaces.append((space, f"{reason}, but a plugin's hint couples channels it cannot match ({why})"))
        self._coupling = ChannelCoupling(self._trace, spaces, pairs)
        self._applier = PruneApplier(model, fixups, self._coupling, self._still_runs, self.get_pruning_group)

    def _space_of(self, layer: Any, kind: str) -> Space | None:
        node = self.module2node.get(layer)
        if node is None:
            return None
        return node.out_space if node.kind == "parameter" or (kind == "in" and node.in_out_coupled) else node.space(kind)

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

    # --- groups -------------------------------------------------------------------------
    def get_pruning_group(self, module: Any, pruning_fn: Callable[..., Any], idxs: Sequence[int]) -> Group:
        """Everything that must be pruned with channels ``idxs`` of ``module``, as a ``Group``."""
        with single_threaded():
            node = self._node(module)
            kind = "out" if node.kind == "parameter" else channel_kind(pruning_fn)
            if kind == "in" and node.in_out_coupled and node.in_space is not None and node.in_space.size == 0:
                kind = "out"  # a coupled layer whose inputs carry no channels (Embedding): "in" means its one space
            space = node.space(kind)
            assert space is not None
            index = validate_idxs(module, idxs, space.current_size, f"{node.name} {kind}put channel")
            return self._group(node, kind, pruning_fn, index)

    def _group(self, root: Node, kind: str, trigger: Callable[..., Any], index: torch.Tensor) -> Group:
        coupling, applier = self._coupling, self._applier
        assert coupling is not None and applier is not None
        root_space = root.space(kind)
        assert root_space is not None
        touched, reasons = coupling.members(root_space, index)
        items: list[GroupItem] = []
        root_item: GroupItem | None = None
        for space, traced in touched:
            node = space.node
            if space.kind == "in" and node.in_out_coupled:
                continue  # pruned along with the same layer's output channels
            handler = self.registry.handler(node.pruner, space.kind, node.pruning_dim if node.kind == "parameter" else None)
            dep = Dependency(trigger, handler, root, node, IndexMapping(coupling, root_space, space),
                             "out" if node.kind == "parameter" else space.kind)
            item = GroupItem(dep, space.current_positions(traced).tolist())
            if space is root_space or (node is root and root_item is None and space.kind == "out"):
                root_item = item
            else:
                items.append(item)
        if root_item is not None:
            items.insert(0, root_item)
        return Group(items, touched, reasons, index.tolist(), coupling, applier)

    def get_all_groups(self, ignored_layers: Iterable[Any] = (), root_module_types: Iterable[type] | None = None) -> Iterator[Group]:
        """One group per prunable root layer: all its channels that may be pruned, with everything coupled to them.

        Roots are layers of ``root_module_types`` (or whose pruner ``acts_like``
        one of them) or, by default, every layer
        whose output channels are its own (not tied to its input). Channels
        coupled with an ignored layer's output, a model input or output, or an
        unknown op are left out.
        """
        trace_ = self._require_trace()
        for given in root_module_types or ():
            if not isinstance(given, type):
                raise TypeError(f"root_module_types takes layer classes such as nn.Conv2d or nn.Linear, not {given!r}")
        with single_threaded():
            groups = list(self._all_groups(trace_, ignored_layers, root_module_types))
        return iter(groups)

    def groups_one_at_a_time(self, ignored_layers: Iterable[Any] = (), root_module_types: Iterable[type] | None = None,
                             ) -> Iterator[Group]:
        """``get_all_groups``, each group drawn only when asked for: a caller that lets go of each keeps one in memory.

        A 70B model's hidden-size group alone holds millions of indices. Channels
        pruned while iterating are not offered again.
        """
        trace_ = self._require_trace()
        drawn = self._all_groups(trace_, list(ignored_layers), root_module_types)
        while True:
            with single_threaded():
                group = next(drawn, None)
            if group is None:
                return
            yield group

    def _all_groups(self, trace_: TraceResult, ignored_layers: Iterable[Any], root_module_types: Iterable[type] | None) -> Iterator[Group]:
        coupling = self._coupling
        assert coupling is not None
        ignored = {id(m) for m in [*ignored_layers, *self.ignored_layers]}
        types = tuple(root_module_types) if root_module_types is not None else None
        ignored_roots = [coupling.roots(n.out_space, torch.arange(n.out_space.current_size)) for n in self.module2node.values()
                         if id(n.module) in ignored and n.out_space is not None and n.out_space.size]
        extra = torch.unique(torch.cat(ignored_roots)) if ignored_roots else torch.empty(0, dtype=torch.long)
        visited = torch.zeros(trace_.n_ids, dtype=torch.bool)
        for node in list(self.module2node.values()):
            if node.kind != "layer" or id(node.module) in ignored or node.out_space is None:
                continue
            if (not counts_as(node.module, node.pruner, types)) if types is not None else node.in_out_coupled:
                continue
            space = node.out_space
            alive, free = coupling.prunable(space)
            ids = space.base + alive
            ok = free & ~torch.isin(coupling.component_roots(ids), extra) & ~visited[ids]
            if not bool(ok.any()):
                continue
            index = space.current_positions(alive[ok])
            group = self._group(node, "out", node.pruner.prune_out_channels, index)
            visited[coupling.component_members(ids[ok])] = True
            yield group

    def one_run_check(self, keep_loadable: bool = False) -> contextlib.AbstractContextManager[None]:
        """Inside ``with graph.one_run_check():``, prunes are checked by one run at the end, not one run each.

        If the model no longer runs at the end, every prune made inside is undone and ``ModelStopsRunningError`` raised
        (``verify_prunes``); with ``keep_loadable`` too, as ``UnloadableError``, when its format cannot state them.
        """
        if self._applier is None:
            raise PruningError("the graph is empty: call build_dependency(model, example_inputs) first")
        return self._applier.one_run_check(keep_loadable)

    def check_pruning_group(self, group: Group) -> bool:
        """True when ``group`` can be pruned: nothing blocked, no layer emptied."""
        return not group.problems()

    def _still_runs(self, ids: torch.Tensor) -> str | None:
        """None if the model runs on the example inputs, slicing as pruning ``ids`` implies (or needs no check), or why not."""
        inputs, forward_fn, mode = self._example
        if mode == "never" or self.model is None:
            return None
        traced = self._require_trace()
        # auto: where a traced op took a size from code, and wherever the trace lost sight (VOLO's C // heads past im2col)
        if mode == "auto" and not traced.unsupported_ops and not self._coupling.sized_by_code(ids):
            return None
        check = SliceCheck(forward_fn, traced, ids)
        return runs(self.model, inputs, check.forward, traced.mode == "shapes", traced.eval_mode) or check.verdict()

    # --- history ------------------------------------------------------------------------
    def pruning_history(self) -> list[list[PruneRecord]]:
        """Every group pruned through this graph, in order: per layer, current indices and traced positions."""
        return [list(records) for records in self._applier.history] if self._applier is not None else []

    def load_pruning_history(self, history: Iterable[Any]) -> None:
        """Prune this graph's model as ``history`` says: the ``pruning_history()`` of a graph of the same architecture.

        Each step is replayed as a group from its root layer, so its coupled layers follow exactly as they did.
        Torch-Pruning's spelling, ``[layer name, is_out_channel_pruning, idxs]`` per step, is read too. Every step's
        root is checked against the model before the first one is pruned, and an error in any step undoes them
        all. (To save and load a pruned model, the
        pruning plan -- ``pruneframe.state_dict`` / ``load_state_dict`` -- is the sturdier way.)
        """
        self._require_trace()
        modules = dict(self.model.named_modules())
        steps: list[tuple[str, str, list[int]]] = []
        for k, step in enumerate(history):
            if isinstance(step, (list, tuple)) and len(step) == 3 and isinstance(step[0], str) and isinstance(step[1], bool):
                name, kind, idxs = step[0], "out" if step[1] else "in", list(step[2])
            elif isinstance(step, (list, tuple)) and step and isinstance(step[0], PruneRecord):
                name, kind, idxs = step[0].name, step[0].kind, list(step[0].idxs)
            else:
                raise TypeError(f"pruning history step {k} is {step!r}; pass what DependencyGraph.pruning_history() returned")
            if name not in modules:
                raise PruningError(f"pruning history step {k} names layer {name!r}, which this model does not have; "
                                   "the history is for another architecture")
            steps.append((name, kind, idxs))
        with self.one_run_check():  # all of it or, on any error, none of it
            for name, kind, idxs in steps:
                node = self._node(modules[name])
                self.get_pruning_group(node.module, self.registry.handler(node.pruner, kind), idxs).prune()

    # --- reading the coupling -------------------------------------------------------------
    @property
    def unsupported_ops(self) -> dict[str, int]:
        """The ops no plugin handles that the trace met, with how often each ran; channels that reach them are blocked."""
        return dict(self._require_trace().unsupported_ops)

    def kept_whole(self, ignored_layers: Iterable[Any] = ()) -> list[KeptWhole]:
        """Every layer side none of whose remaining channels may be pruned, in trace order, with the reasons.

        A side stays whole when all its channels are blocked (they reach a model
        input or output, an op no plugin handles, a layer ignored at
        ``build_dependency``, a plugin's module hint, ...) or are coupled with the
        output of a layer in ``ignored_layers``, which ``get_all_groups`` leaves
        out the same way. The input side of a layer whose inputs and outputs are
        one channel space (a batch norm) is its output side and is not listed.
        """
        trace_ = self._require_trace()
        coupling = self._coupling
        assert coupling is not None
        ignored = {id(m) for m in ignored_layers}
        ignored_roots = [(coupling.roots(n.out_space, torch.arange(n.out_space.current_size)), f"{n.name} is an ignored layer")
                         for n in self.module2node.values()
                         if id(n.module) in ignored and n.out_space is not None and n.out_space.current_size]
        reasons_of: dict[bytes, list[str]] = {}  # the components a side's blocked channels lie in -> their reasons
        kept = []
        for space in trace_.spaces:
            node = space.node
            if space.current_size == 0 or (space.kind == "in" and node.in_out_coupled):
                continue
            _, free = coupling.prunable(space)
            reasons: list[str] = []
            if not bool(free.all()):
                blocked = torch.nonzero(~free).flatten()  # current indices: alive positions in order
                key = torch.unique(coupling.roots(space, blocked)).numpy().tobytes()
                if key not in reasons_of:  # one lookup per distinct set of components, not per side (an LLM's hidden size)
                    reasons_of[key] = coupling.members(space, blocked)[1]
                reasons += reasons_of[key]
            if ignored_roots and bool(free.any()):
                roots = coupling.roots(space, torch.arange(space.current_size))
                for kept_roots, reason in ignored_roots:
                    hit = torch.isin(roots, kept_roots)
                    if bool((hit & free).any()):
                        reasons.append(reason)
                        free = free & ~hit
            if not bool(free.any()):
                kept.append(KeptWhole(node.name, node.type, space.kind, space.current_size, tuple(dict.fromkeys(reasons))))
        return kept

    def channel_ties(self) -> list[ChannelTie]:
        """Pairs of channel spaces the trace tied directly, each with the traced positions tied, in trace order.

        A layer's output tied to the input of the layer that reads it, the two
        operands of an add, two layers reading one tensor: the edges of the
        coupling. Ties through the slices of a product (attention heads) and ties
        to reasons for keeping channels are not edges between two spaces and are
        not listed.
        """
        trace_ = self._require_trace()
        spaces = trace_.spaces
        if not spaces or not trace_.edges.numel():
            return []
        bases = torch.tensor([s.base for s in spaces], dtype=torch.long)
        ends = bases + torch.tensor([s.size for s in spaces], dtype=torch.long)
        edges = torch.unique(trace_.edges.long(), dim=1).contiguous()
        owner = torch.searchsorted(bases, edges, right=True) - 1  # the space each id would lie in
        owned = (owner >= 0) & (edges < ends[owner.clamp(min=0)])
        keep = owned.all(0) & (owner[0] != owner[1])
        edges, owner = edges[:, keep], owner[:, keep]
        swap = owner[0] > owner[1]  # one direction per pair of spaces
        edges[:, swap], owner[:, swap] = edges.flip(0)[:, swap], owner.flip(0)[:, swap]
        key = owner[0] * len(spaces) + owner[1]
        order = torch.argsort(key, stable=True)
        pairs, counts = torch.unique_consecutive(key[order], return_counts=True)
        ties = []
        for pair, run in zip(pairs.tolist(), torch.split(edges[:, order], counts.tolist(), dim=1)):
            a, b = spaces[pair // len(spaces)], spaces[pair % len(spaces)]
            ties.append(ChannelTie(a, b, run[0] - a.base, run[1] - b.base))
        return ties
