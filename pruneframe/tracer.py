"""Traces one forward pass and records which channels are coupled.

The model runs once on the example inputs inside a ``TorchDispatchMode``. Layers
that have a pruner are *leaves*: forward hooks label their outputs with fresh
channel ids and tie their inputs' labels to their input channels; nothing
inside them is traced. Every other ATen op goes to the op handler a plugin
registered for it, which computes the labels of its outputs from those of its
inputs and couples channels that must go together. An op nobody handles blocks
the channels that reach it.

The result is a table of channel ids (grouped into ``Space``s owned by
``Node``s) and the couplings between them; ``pruneframe.graph`` turns those
into groups.
"""
from __future__ import annotations

import contextlib
import gc
import math
import logging
import os
import warnings
from typing import Any, Callable, Iterable, Sequence

import attrs
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.nn.utils.stateless import _reparametrize_module
from torch.utils._pytree import tree_flatten

from . import labels as L
from .errors import PruningError, UnsupportedOpWarning
from .graph.node import Node, Space
from .registry import Registry

logger = logging.getLogger(__name__)

ENV_TRACE = "PRUNEFRAME_TRACE"  # "auto" (default): shapes only when possible; "real": always on real tensors


def tensors_in(obj: Any) -> list[torch.Tensor]:
    """The tensors in a nested structure of tuples, lists and dicts (or other pytrees), in order."""
    found: list[torch.Tensor] = []
    _collect_tensors(obj, found)
    return found


def _collect_tensors(obj: Any, found: list[torch.Tensor]) -> None:
    # the common containers by hand: this runs for every traced op, and tree_flatten is several times slower
    if isinstance(obj, torch.Tensor):
        found.append(obj)
    elif isinstance(obj, (tuple, list)):
        for x in obj:
            if isinstance(x, torch.Tensor):
                found.append(x)
            elif isinstance(x, (tuple, list, dict)) or not isinstance(x, (int, float, bool, str, type(None), torch.dtype, torch.device)):
                _collect_tensors(x, found)
    elif isinstance(obj, dict) and type(obj) is dict:
        for x in obj.values():
            _collect_tensors(x, found)
    elif not isinstance(obj, (int, float, bool, str, type(None), torch.dtype, torch.device, torch.memory_format, torch.layout)):
        leaves, _ = tree_flatten(obj)  # other registered pytrees (e.g. a model's output dataclass)
        if not (len(leaves) == 1 and leaves[0] is obj):
            for x in leaves:
                _collect_tensors(x, found)


class OpContext:
    """What an op handler may read and write while the trace runs.

    Labels (see ``pruneframe.labels``) are int64 tensors broadcastable to the
    traced tensor; ``None`` means the tensor carries no channel (a constant,
    which cannot shrink).
    """

    def __init__(self, recorder: "_Recorder"):
        self._r = recorder

    def ids(self, t: Any) -> torch.Tensor | None:
        """The reduced label of ``t`` (None for constants and non-tensors)."""
        if not isinstance(t, torch.Tensor):
            return None
        return self._r.lookup(t)

    def full(self, t: torch.Tensor) -> torch.Tensor:
        """The label of ``t`` expanded to its shape, NONE where it carries no channel."""
        return L.full(self.ids(t), t.shape)

    def set(self, t: Any, ids: torch.Tensor | None) -> None:
        """Make ``ids`` (broadcastable to ``t``'s shape) the label of output ``t``."""
        if isinstance(t, torch.Tensor):
            self._r.assign(t, ids)

    def couple(self, a: torch.Tensor, b: torch.Tensor) -> None:
        """Channels at the same (broadcast) position of labels ``a`` and ``b`` are pruned together."""
        self._r.couple(a, b)

    def couple_along(self, ids: torch.Tensor, dim: int) -> None:
        """All channels along ``dim`` of a label go together (that dimension cannot change size)."""
        if ids.dim() and ids.shape[dim] > 1:
            self._r.couple(ids, ids.narrow(dim, 0, 1))

    def tie_slices(self, labels: Sequence[torch.Tensor | None], shape: Sequence[int], dims: Sequence[int]) -> torch.Tensor | None:
        """Slices of several operands that exist only together, e.g. attention head ``h`` of ``q``, ``k`` and ``v``.

        Each of ``labels`` (aligned to a result of ``shape``) is cut into slices
        along ``dims``, the batch dimensions of a product: slice ``p`` of one
        operand may vanish only when slice ``p`` of every other one does.
        That is not a channel-to-channel coupling (head ``h`` of ``q`` may be
        whole-head coupled while ``v``'s positions are coupled across heads),
        so it is resolved once the couplings are known: a slice that one
        prune can remove is joined with the others' slices, and a position
        some operand cannot lose by one prune is kept in all of them.

        Returns a label along ``dims`` for the result's slices (ids of no
        layer), or None when no operand varies along ``dims``.
        """
        return self._r.tie_slices(labels, shape, dims)

    def sized_by_code(self, ids: torch.Tensor | None) -> None:
        """Channels in ``ids`` met an op whose sizes the model's code passed in (a view, an expand, a split).

        If the code computed those sizes from the tensor, a prune follows; if it
        wrote a literal, the prune breaks the model, and no trace can tell which.
        A prune touching such channels is checked by running the model once
        more on the example inputs (``build_dependency(verify_prunes=...)``).
        """
        if ids is not None:
            self._r.sized_by_code(ids)

    def block(self, ids: torch.Tensor | None, reason: str) -> None:
        """Channels in ``ids`` are never pruned, because of ``reason``."""
        if ids is not None:
            self._r.block(ids, reason)

    def blocked_label(self, t: torch.Tensor, reason: str = "it comes out of an op whose channels cannot be followed") -> torch.Tensor:
        """A label for an output whose channels cannot be followed: whatever consumes it keeps its channels."""
        return L.constant(t.shape, self._r.reason_id(reason))

    def replay(self, op: Any, args: Sequence[Any], kwargs: dict[str, Any], data: Iterable[int] = (0,)) -> Any:
        """Run ``op`` again with the labels of the data arguments in place of the tensors.

        ``data`` lists the positional arguments that hold data (a tensor or a
        list of tensors); other tensor arguments (indices, masks) are passed
        unchanged. Pure data-movement ops (views, cat, split, permute, index)
        then compute exactly which channel lands where.
        """
        data = set(data)

        def swap(x: Any) -> Any:
            if isinstance(x, torch.Tensor):
                return self.full(x)
            if isinstance(x, (list, tuple)):
                return type(x)(swap(y) for y in x)
            return x

        def values(x: Any) -> Any:
            if isinstance(x, torch.Tensor):
                return self._r.real(x)
            if isinstance(x, (list, tuple)):
                return type(x)(values(y) for y in x)
            return x

        new_args = [swap(a) if i in data else values(a) for i, a in enumerate(args)]
        return op(*new_args, **{k: values(v) for k, v in kwargs.items()})

    def unsupported(self, op: Any, args: Sequence[Any], kwargs: dict[str, Any], out: Any) -> None:
        """What happens to an op nobody understands: its inputs' channels are blocked, its outputs too."""
        self._r.note_unsupported(op)
        reason = f"it reaches {op}, which no op plugin handles"
        for t in tensors_in((args, kwargs)):
            self.block(self.ids(t), reason)
        for t in tensors_in(out):
            self.set(t, self.blocked_label(t, f"it comes out of {op}, which no op plugin handles"))


@attrs.define
class TraceResult:
    """Channel ids, who owns them, and which are coupled or blocked."""

    nodes: list[Node]
    spaces: list[Space]
    n_ids: int
    edges: torch.Tensor  # 2 x E: coupled channel ids, and channel ids tied to reason ids (blocked)
    reasons: dict[int, str]  # reason id -> why the channels tied to it are never pruned
    unsupported_ops: dict[str, int]
    mode: str = "real"  # "shapes": traced on fake tensors; "real": on the example inputs themselves
    ties: list[tuple[torch.Tensor, list[torch.Tensor]]] = attrs.Factory(list)  # (slice ids (P,), per operand (P, k) ids)
    sized_by_code: torch.Tensor = attrs.Factory(lambda: torch.empty(0, dtype=torch.long))  # ids that met code-given sizes


class NeedsRealValues(Exception):
    """A shapes-only trace met something only real values can answer; the trace is redone on real tensors."""


def _storage_key(t: torch.Tensor) -> int:
    try:
        return t.untyped_storage()._cdata
    except (RuntimeError, NotImplementedError):  # tensors without storage (e.g. some subclasses): no aliasing known
        return id(t)


def _is_mutating(op: Any) -> list[int]:
    schema = getattr(op, "_schema", None)
    if schema is None:
        return []
    return [i for i, a in enumerate(schema.arguments) if a.alias_info is not None and a.alias_info.is_write]


class _Recorder(TorchDispatchMode):
    """The dispatch mode and leaf hooks that build a ``TraceResult``."""

    def __init__(self, registry: Registry, leaves: dict[nn.Module, Node], raw_params: dict[int, tuple[str, nn.Parameter, int | None]],
                 real_of: dict[int, torch.Tensor] | None = None, shapes_only: bool = False):
        super().__init__()
        self.real_of = real_of or {}
        self.shapes_only = shapes_only
        self.registry = registry
        self.leaves = leaves
        self.raw_params = raw_params
        self.param_nodes: dict[int, Node] = {}
        self.nodes: list[Node] = list(leaves.values())
        self.spaces: list[Space] = []
        self.next_id = 1  # 0 is BLOCKED
        self.store: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self.storage_users: dict[int, list[torch.Tensor]] = {}
        self.edges: list[torch.Tensor] = []
        self.ties: list[tuple[torch.Tensor, list[torch.Tensor]]] = []
        self.code_sized: list[torch.Tensor] = []
        self.reasons: dict[int, str] = {}
        self._reason_ids: dict[str, int] = {}
        self.unsupported_ops: dict[str, int] = {}
        self.depth = 0
        self.ctx = OpContext(self)
        self.assigned: set[int] = set()
        self.leaf_problems: list[str] = []

    # --- labels -------------------------------------------------------------
    def allocate(self, node: Node, kind: str, size: int) -> Space:
        space = Space(node, kind, self.next_id, size)
        self.next_id += size
        self.spaces.append(space)
        if kind == "out":
            node.out_space = space
        else:
            node.in_space = space
        return space

    def lookup(self, t: torch.Tensor) -> torch.Tensor | None:
        found = self.store.get(id(t))
        if found is not None and found[0] is t:
            return found[1]
        raw = self.raw_params.get(id(t))
        if raw is not None:
            return self._label_parameter(t, *raw)
        return None

    def _label_parameter(self, p: torch.Tensor, name: str, param: nn.Parameter, dim: int | None) -> torch.Tensor | None:
        if p.dim() == 0:
            return None
        if dim is None:  # the last dimension with more than one element, as Torch-Pruning does
            sizes = [d for d in range(p.dim()) if p.shape[d] > 1]
            dim = sizes[-1] if sizes else p.dim() - 1
        dim = dim % p.dim()
        found = self.registry.resolve(nn.Parameter)
        if found is None:
            ids = None  # no plugin prunes raw parameters: they stay what they are, a constant
        else:
            node = Node(name, param, found.pruner, found.plugin, kind="parameter", pruning_dim=dim)
            self.param_nodes[id(p)] = node
            self.nodes.append(node)
            space = self.allocate(node, "out", p.shape[dim])
            ids = L.placed(p.shape, dim, space.ids())
        self.assign(p, ids)
        return ids

    def assign(self, t: torch.Tensor, ids: torch.Tensor | None) -> None:
        if ids is not None:
            ids = L.align(ids, t.dim())
            if ids.dim() != t.dim():
                raise PruningError(f"an op handler gave a label of shape {tuple(ids.shape)} to a tensor of shape {tuple(t.shape)}")
            ids = L.reduce(ids)
            if bool((ids == L.NONE).all()):
                ids = None
        self.store[id(t)] = (t, ids)
        self.assigned.add(id(t))
        self.storage_users.setdefault(_storage_key(t), []).append(t)

    def couple(self, a: torch.Tensor, b: torch.Tensor) -> None:
        a, b = torch.broadcast_tensors(a, b)
        keep = (a >= 0) & (b >= 0) & (a != b)
        if bool(keep.any()):
            self.edges.append(torch.stack([a[keep], b[keep]]))

    def tie_slices(self, labels: Sequence[torch.Tensor | None], shape: Sequence[int], dims: Sequence[int]) -> torch.Tensor | None:
        ndim = len(shape)
        dims = sorted({d % ndim for d in dims})
        # An operand the same in every slice (broadcast, or holding channels only elsewhere) loses no slice alone.
        present = [L.align(ids, ndim) for ids in labels if ids is not None]
        present = [ids for ids in present if any(ids.shape[d] > 1 for d in dims)]
        if not present:
            return None
        slices = math.prod(shape[d] for d in dims)
        virtual = torch.arange(self.next_id, self.next_id + slices, dtype=torch.long)
        self.next_id += slices
        rest = [d for d in range(ndim) if d not in dims]
        sides = []
        for ids in present:
            sized = [shape[d] if d in dims else ids.shape[d] for d in range(ndim)]
            sides.append(ids.expand(sized).permute(*dims, *rest).reshape(slices, -1))
        self.ties.append((virtual, sides))
        view = [shape[d] if d in dims else 1 for d in range(ndim)]
        return virtual.view(view)

    def sized_by_code(self, ids: torch.Tensor) -> None:
        ids = ids[ids > 0].flatten()
        if ids.numel():
            self.code_sized.append(ids)

    def reason_id(self, reason: str) -> int:
        """An id standing for one reason to keep channels; it is blocked, and so is everything tied to it."""
        found = self._reason_ids.get(reason)
        if found is None:
            found = self._reason_ids[reason] = self.next_id
            self.next_id += 1
            self.reasons[found] = reason
            self.edges.append(torch.tensor([[found], [L.BLOCKED]]))
        return found

    def block(self, ids: torch.Tensor, reason: str) -> None:
        ids = torch.unique(ids[ids > 0])
        if ids.numel():
            self.edges.append(torch.stack([ids, torch.full_like(ids, self.reason_id(reason))]))

    def note_unsupported(self, op: Any) -> None:
        name = str(op)
        self.unsupported_ops[name] = self.unsupported_ops.get(name, 0) + 1

    # --- ops ----------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.depth == 0:
            with _disable_current_modes():  # label arithmetic runs on real tensors, untraced
                self.handle_op(func, args, kwargs, out)
        return out

    def real(self, t: torch.Tensor) -> torch.Tensor:
        """The values of a non-label tensor argument (an index, a mask); a shapes-only trace may not have them."""
        if not isinstance(t, FakeTensor):
            return t
        found = self.real_of.get(id(t))
        if found is None:
            raise NeedsRealValues("an op handler needs the values of a tensor computed during the forward pass")
        return found

    def handle_op(self, op: Any, args: tuple, kwargs: dict, out: Any) -> None:
        inputs = tensors_in((args, kwargs))
        outputs = tensors_in(out)
        if not outputs and not _is_mutating(op):
            return  # a query (x.device, x.item()): no tensor carries channels onward
        if not any(self.lookup(t) is not None for t in inputs):
            for t in outputs:
                self.assign(t, None)
            return
        entry = self.registry.op_handler(op)
        self.assigned = set()
        if entry is None:
            self.ctx.unsupported(op, args, kwargs, out)
        else:
            try:
                entry.handler(self.ctx, op, args, kwargs, out)
            except (PruningError, NeedsRealValues):
                raise
            except Exception as exc:
                raise PruningError(
                    f"op handler {entry.name!r} of plugin {entry.plugin!r} failed on {op}: {type(exc).__name__}: {exc}. "
                    f"Disable the plugin with PRUNEFRAME_DISABLE_PLUGINS={entry.plugin} or report it to its authors."
                ) from exc
        for t in outputs:
            if id(t) not in self.assigned:  # a handler that forgot an output must not let channels through unseen
                self.block(self.ctx.full(t) if self.lookup(t) is not None else L.constant(t.shape, L.NONE), f"{op} left it unlabelled")
                self.assign(t, L.constant(t.shape, self.reason_id(f"the handler of {op} left it unlabelled")))
        for i in _is_mutating(op):
            if i < len(args) and isinstance(args[i], torch.Tensor):
                self._check_aliases(args[i], op)

    def _check_aliases(self, t: torch.Tensor, op: Any) -> None:
        """An in-place write through a view changes its base too: block both, the labels cannot follow."""
        users = self.storage_users.get(_storage_key(t), [])
        others = [
            u for u in users
            if u is not t and (u.shape != t.shape or u.stride() != t.stride() or u.storage_offset() != t.storage_offset())
        ]
        if not others:
            return
        reason = f"{op} writes in place into a view of another tensor"
        for u in [t, *others]:
            ids = self.lookup(u)
            if ids is not None:
                self.block(ids, reason)
                self.store[id(u)] = (u, L.constant(u.shape, self.reason_id(reason)))

    # --- leaf layers ------------------------------------------------------------
    def leaf_pre(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self.depth += 1

    def leaf_post(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        self.depth -= 1
        if self.depth == 0:
            with _disable_current_modes():  # label arithmetic is ours, not the model's: do not trace it
                self.handle_leaf(self.leaves[module], args, kwargs, output)

    def handle_leaf(self, node: Node, args: tuple, kwargs: dict, output: Any) -> None:
        module, pruner = node.module, node.pruner
        inputs, outputs = tensors_in((args, kwargs)), tensors_in(output)
        try:
            in_dims = list(pruner.input_channel_dims(module, inputs))
            out_dims = list(pruner.output_channel_dims(module, outputs))
        except Exception as exc:
            raise PruningError(
                f"the pruner {type(pruner).__name__} (plugin {node.plugin!r}) failed to describe layer {node.name!r}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        node.calls += 1
        first = node.calls == 1

        def size_of(tensors: list[torch.Tensor], dims: list[Any], only_inputs: bool) -> int:
            for t, d in zip(tensors, dims):
                if d is not None and t.dim() and (not only_inputs or d.space == "in"):
                    return t.shape[d.dim] // d.repeat
            return 0

        if first:  # an output's ChannelDim always means the output channels, whatever its space says
            self.allocate(node, "out", size_of(outputs, out_dims, False))
            self.allocate(node, "in", size_of(inputs, in_dims, True))
        out_space, in_space = node.out_space, node.in_space
        assert out_space is not None and in_space is not None

        mismatch = None
        for t, d in zip(outputs, out_dims):
            if d is None:
                self.assign(t, None)
            elif t.dim() == 0 or t.shape[d.dim] != out_space.size * d.repeat:
                mismatch = f"output of shape {tuple(t.shape)} does not hold {out_space.size} channels along dim {d.dim}"
                self.assign(t, L.constant(t.shape, self.reason_id(f"{node.name} produced it in a shape its pruner does not describe")))
            else:
                self.assign(t, L.placed(t.shape, d.dim, out_space.ids().repeat(d.repeat)))
        for t, d in zip(inputs, in_dims):
            ids = self.lookup(t)
            if d is None:
                if ids is not None:
                    self.block(ids, f"it enters {node.name} ({node.type}) where its pruner expects no channels")
                continue
            target = out_space if d.space == "out" else in_space
            if t.dim() == 0 or t.shape[d.dim] != target.size * d.repeat:
                mismatch = f"input of shape {tuple(t.shape)} does not hold {target.size} channels along dim {d.dim}"
                if ids is not None:
                    self.block(ids, f"it enters {node.name} along an unexpected dimension")
                continue
            mine = L.placed(t.shape, d.dim, target.ids().repeat(d.repeat))
            if ids is None:  # a constant input cannot shrink: its channels go all together or not at all
                self.couple(mine, mine.narrow(d.dim % t.dim(), 0, 1))
            else:
                self.couple(L.align(ids, t.dim()), mine)
        if mismatch is not None:
            self.leaf_problems.append(f"{node.name} ({node.type}): {mismatch}")
            for space in (out_space, in_space):
                self.block(space.ids(), f"{node.name} was called with shapes its pruner does not describe ({mismatch})")
        if first:
            for c in pruner.couplings(module, out_space.size, in_space.size):
                a = node.space(c.a_space)
                b = node.space(c.b_space)
                self.couple(torch.as_tensor(c.a_idxs, dtype=torch.long) + a.base, torch.as_tensor(c.b_idxs, dtype=torch.long) + b.base)


@contextlib.contextmanager
def single_threaded():
    """Run torch on one thread: label arithmetic is thousands of tiny ops, and waking a thread pool for each
    costs more than the op (badly so on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def gc_paused():
    """No cyclic garbage collection while a trace runs: it allocates many short-lived objects, and in a process that
    holds a large model the full collections they trigger cost more than the trace (about 0.2 s of a 0.65 s first
    ResNet-50 build). Reference counting still frees everything acyclic; the collector's state is restored."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def default_forward(model: nn.Module, example_inputs: Any) -> Any:
    """Torch-Pruning's convention: a dict is keyword inputs, a tuple or list positional ones."""
    if isinstance(example_inputs, dict):
        return model(**example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return model(*example_inputs)
    return model(example_inputs)


def trace(
    model: nn.Module,
    example_inputs: Any,
    registry: Registry,
    customized: dict[type, Any],
    forward_fn: Callable[[nn.Module, Any], Any] | None = None,
    output_transform: Callable[[Any], Any] | None = None,
    unwrapped_parameters: Iterable[tuple[nn.Parameter, int]] | None = None,
) -> TraceResult:
    """Run ``model`` once and record its channel couplings. The model is left as it was."""
    leaves: dict[nn.Module, Node] = {}
    inside_leaf: set[int] = set()
    for name, module in model.named_modules():
        if id(module) in inside_leaf:
            continue
        found = registry.resolve(type(module), customized)
        if found is None:
            continue
        leaves[module] = Node(name or "(model)", module, found.pruner, found.plugin)
        for sub in module.modules():
            if sub is not module:
                inside_leaf.add(id(sub))

    owned = {id(p) for m in leaves for p in m.parameters()}
    explicit = {id(p): dim for p, dim in (unwrapped_parameters or ())}
    raw_params: dict[int, tuple[str, nn.Parameter, int | None]] = {}
    for pname, p in model.named_parameters():
        if id(p) not in owned:
            raw_params[id(p)] = (pname, p, explicit.get(id(p)))
    for p, dim in unwrapped_parameters or ():
        if id(p) not in raw_params:
            raw_params[id(p)] = (f"<unwrapped {tuple(p.shape)}>", p, dim)

    forward = forward_fn or default_forward
    recorder = None
    if os.environ.get(ENV_TRACE, "auto") != "real":
        try:
            with single_threaded(), gc_paused():
                recorder = _record(model, example_inputs, registry, leaves, raw_params, forward, output_transform, shapes_only=True)
        except PruningError:
            raise
        except Exception as exc:  # the shapes-only pass cannot run this model (values needed, an op without a fake
            # kernel, data-dependent shapes): trace it for real instead, which gives the same graph, only slower
            logger.debug("shapes-only trace failed (%s: %s); tracing with real tensors", type(exc).__name__, exc)
            for node in leaves.values():
                node.calls, node.out_space, node.in_space = 0, None, None
    if recorder is None:
        with gc_paused():
            recorder = _record(model, example_inputs, registry, leaves, raw_params, forward, output_transform, shapes_only=False)

    for node in leaves.values():
        if node.calls == 0:  # never called: nothing is known of its channels, so they stay as they are
            node.out_space = node.out_space or recorder.allocate(node, "out", 0)
            node.in_space = node.in_space or recorder.allocate(node, "in", 0)
    if recorder.unsupported_ops:
        listed = ", ".join(f"{k} (x{v})" for k, v in sorted(recorder.unsupported_ops.items()))
        warnings.warn(
            f"pruneframe does not understand these ops, so channels that reach them are not pruned: {listed}. "
            "Write an op plugin (see docs/writing-plugins.md) to prune across them.",
            UnsupportedOpWarning,
            stacklevel=3,
        )
    edges = torch.cat(recorder.edges, dim=1) if recorder.edges else torch.empty(2, 0, dtype=torch.long)
    return TraceResult(recorder.nodes, recorder.spaces, recorder.next_id, edges, recorder.reasons, recorder.unsupported_ops,
                       "shapes" if recorder.shapes_only else "real", recorder.ties,
                       torch.unique(torch.cat(recorder.code_sized)) if recorder.code_sized else torch.empty(0, dtype=torch.long))


def _record(model: nn.Module, example_inputs: Any, registry: Registry, leaves: dict[nn.Module, Node],
            raw_params: dict[int, tuple[str, nn.Parameter, int | None]], forward: Callable[[nn.Module, Any], Any],
            output_transform: Callable[[Any], Any] | None, shapes_only: bool) -> "_Recorder":
    """One forward pass under the recorder: on fake tensors (shapes only, no arithmetic) or on the real ones."""
    real_of: dict[int, torch.Tensor] = {}
    if shapes_only:
        fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
        swapped: dict[str, torch.Tensor] = {}
        for name, t in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]:
            fake = fake_mode.from_tensor(t)  # memoised: a weight tied under two names stays one fake tensor
            swapped[name] = fake
            real_of[id(fake)] = t
        raw_params = {id(swapped[n]) if n in swapped else key: (n, p, d) for key, (n, p, d) in raw_params.items()}
        inputs = _map_tensors(example_inputs, fake_mode.from_tensor)
        for t_real, t_fake in zip(tensors_in(example_inputs), tensors_in(inputs)):
            real_of[id(t_fake)] = t_real
        contexts = [_reparametrize_module(model, swapped, tie_weights=True, strict=False), fake_mode]
    else:
        inputs, contexts = example_inputs, []

    recorder = _Recorder(registry, leaves, raw_params, real_of, shapes_only)
    handles = []
    for module in leaves:
        handles.append(module.register_forward_pre_hook(recorder.leaf_pre, with_kwargs=True))
        handles.append(module.register_forward_hook(recorder.leaf_post, with_kwargs=True))
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()} if not shapes_only else {}
    rng = torch.get_rng_state()
    model_input = recorder.reason_id("it comes from a model input")
    for t in tensors_in(inputs):
        recorder.assign(t, L.constant(t.shape, model_input))
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.no_grad())
            for c in contexts:
                stack.enter_context(c)
            stack.enter_context(recorder)
            output = forward(model, inputs)
            finals = tensors_in(output)
            if output_transform is not None:
                finals += tensors_in(output_transform(output))
            with _disable_current_modes():
                for t in finals:
                    ids = recorder.lookup(t)
                    if ids is not None:
                        recorder.block(ids, "it reaches a model output")
    finally:
        for h in handles:
            h.remove()
        with torch.no_grad():
            for n, b in model.named_buffers():
                if n in buffers and b.shape == buffers[n].shape:
                    b.copy_(buffers[n])
        torch.set_rng_state(rng)
    return recorder


def runs(model: nn.Module, example_inputs: Any, forward_fn: Callable[[nn.Module, Any], Any] | None,
         shapes_only: bool) -> str | None:
    """Whether ``model`` still runs on ``example_inputs``: None if it does, else what went wrong.

    Shapes only (fake tensors) when the model was traced that way, so the check costs no arithmetic;
    otherwise a real forward pass, after which buffers and the RNG are put back.
    """
    forward = forward_fn or default_forward
    try:
        if shapes_only:
            fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
            swapped = {n: fake_mode.from_tensor(t) for n, t in
                       [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]}
            inputs = _map_tensors(example_inputs, fake_mode.from_tensor)
            with single_threaded(), gc_paused(), torch.no_grad(), _reparametrize_module(model, swapped, tie_weights=True, strict=False), fake_mode:
                forward(model, inputs)
        else:
            buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
            rng = torch.get_rng_state()
            try:
                with torch.no_grad():
                    forward(model, example_inputs)
            finally:
                with torch.no_grad():
                    for n, b in model.named_buffers():
                        if n in buffers and b.shape == buffers[n].shape:
                            b.copy_(buffers[n])
                torch.set_rng_state(rng)
    except Exception as exc:  # whatever the model's own code raises is the answer, reported to the caller
        return f"{type(exc).__name__}: {exc}"
    return None


def _map_tensors(obj: Any, fn: Callable[[torch.Tensor], Any]) -> Any:
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, (tuple, list)):
        return type(obj)(_map_tensors(x, fn) for x in obj)
    if isinstance(obj, dict):
        return type(obj)((k, _map_tensors(v, fn)) for k, v in obj.items())
    return obj
