"""The dispatch mode and leaf-layer hooks that record, during one forward pass, which channels are coupled.

Layers that have a pruner are *leaves*: forward hooks label their outputs with
fresh channel ids and tie their inputs' labels to their input channels;
nothing inside them is traced. Every other ATen op goes to the op handler a
plugin registered for it, which computes the labels of its outputs from those
of its inputs and couples channels that must go together. An op nobody
handles blocks the channels that reach it.
"""
from __future__ import annotations

import copy
import math
from typing import Any, Sequence

import attrs
import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes

from ..errors import PruningError
from ..graph.node import Node, Space
from ..graph.slice_bounds import TracedSlice, slice_to_check
from ..registry import Registry
from ..runtime import tensors_in
from . import labels as L
from .context import OpContext


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
    eval_mode: bool = False  # traced with every module in eval mode (the model did not run in training mode)
    slices: list[TracedSlice] = attrs.Factory(list)  # slices along channels, checked after a prune (graph.slice_bounds)


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


class Recorder(TorchDispatchMode):
    """The dispatch mode and leaf hooks that build a ``TraceResult``."""

    def __init__(self, registry: Registry, leaves: dict[nn.Module, Node], raw_params: dict[int, tuple[str, nn.Parameter, int | None]],
                 real_of: dict[int, torch.Tensor] | None = None, shapes_only: bool = False):
        super().__init__()
        self.real_of = real_of or {}
        self.shapes_only = shapes_only
        self.registry = registry
        self._undescribed_by_type: dict[type, bool] = {}
        self._builtin_plugins = {p.name for p in registry.plugins if p.builtin}
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
        self.slices: list[TracedSlice] = []
        self.check_slices = True  # False (verify_prunes="never"): no run checks a slice, so a slice pins its channels
        self.eval_mode = False  # set by the trace: the pass ran with every module in eval mode
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

    def record_slice(self, ids: torch.Tensor, dim: int, start: Any, end: Any) -> bool:
        """Record a step-1 slice along ``dim`` of label ``ids`` for the run check; False when it cannot be checked."""
        if not self.check_slices:
            return False
        checkable, traced = slice_to_check(self.spaces, self.reasons, ids, dim, start, end)
        if traced is not None:
            self.slices.append(traced)
            self.sized_by_code(traced.ids)
        return checkable

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

    def _check_undescribed_tensors(self, node: Node) -> None:
        """A subclass of a layer type a built-in pruner serves may hold tensors that pruner does not know (timm's
        ScaledStdConv2d keeps a per-output ``gain``). Prune a shape-only copy of the layer once per class: a tensor
        sized like the channels that shrinks neither way means the pruner leaves it stale, so every prune of this
        layer is checked by running the model (and undone if it breaks it) instead of being trusted."""
        module = node.module
        if not isinstance(module, nn.Module) or self.registry.registered_for(type(module)) is type(module):
            return
        if node.plugin not in self._builtin_plugins:  # only pruners known to have no side effects are tried on a copy
            return
        known = self._undescribed_by_type.get(type(module))
        if known is None:
            known = self._undescribed_by_type[type(module)] = _leaves_stale_tensors(module, node.pruner)
        if known:
            for space in (node.out_space, node.in_space):
                if space is not None and space.size:
                    self.sized_by_code(space.ids())

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

        inner = inner_channels(pruner, module)
        if first:  # an output's ChannelDim means the output channels (the input channels for a layer with inner ones)
            self.allocate(node, "out", inner if inner is not None else size_of(outputs, out_dims, False))
            self.allocate(node, "in", size_of(inputs, in_dims, True))
        out_space, in_space = node.out_space, node.in_space
        assert out_space is not None and in_space is not None
        carried = in_space if inner is not None else out_space  # the channels its outputs hold

        mismatch = None
        for t, d in zip(outputs, out_dims):
            if d is None:
                self.assign(t, None)
            elif t.dim() == 0 or t.shape[d.dim] != carried.size * d.repeat:
                mismatch = f"output of shape {tuple(t.shape)} does not hold {carried.size} channels along dim {d.dim}"
                self.assign(t, L.constant(t.shape, self.reason_id(f"{node.name} produced it in a shape its pruner does not describe")))
            else:
                self.assign(t, L.placed(t.shape, d.dim, carried.ids().repeat(d.repeat)))
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
            self._check_undescribed_tensors(node)
            for c in pruner.couplings(module, out_space.size, in_space.size):
                a = node.space(c.a_space)
                b = node.space(c.b_space)
                self.couple(torch.as_tensor(c.a_idxs, dtype=torch.long) + a.base, torch.as_tensor(c.b_idxs, dtype=torch.long) + b.base)


def inner_channels(pruner: Any, layer: Any) -> int | None:
    """The channels a layer keeps inside (``pruner.inner_channels(layer)``), or None for an ordinary layer.

    A layer that maps its input channels back onto the same channels through an inner width no tensor shows
    (a fused MLP; the experts of a mixture-of-experts layer, their hidden units pruned alike in every expert)
    has that width as its output channels, and its outputs carry its input channels.
    """
    method = getattr(pruner, "inner_channels", None)
    if method is None:
        return None
    size = method(layer)
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
        raise PruningError(f"{type(pruner).__name__}.inner_channels returned {size!r} for {type(layer).__name__}; "
                           "it must return a channel count (an int >= 0) or None")
    return size


def add_parameter_spaces(trace: TraceResult, registry: Registry) -> list[Node]:
    """Parameter nodes for the tensors of leaf layers along dimensions none of their channel spaces holds.

    A pruner lists them with ``parameter_spaces(layer) -> [(tensor name, dim), ...]`` (the expert dimension of
    fused expert weights). Each becomes a node pruned along ``dim`` by the raw-parameter plugin, coupled with
    nothing until a module hint couples it (``ModuleHints.couple``), so it is pruned only with what it is tied to.
    Returns the nodes added (to ``trace``'s nodes and spaces, with fresh channel ids).
    """
    found = registry.resolve(nn.Parameter)
    added: list[Node] = []
    for node in list(trace.nodes):
        method = getattr(node.pruner, "parameter_spaces", None)
        if node.kind != "layer" or method is None or node.calls == 0:
            continue
        for name, dim in method(node.module):
            tensor = getattr(node.module, name, None)
            if not isinstance(tensor, nn.Parameter) or not -tensor.dim() <= dim < tensor.dim():
                raise PruningError(f"{type(node.pruner).__name__}.parameter_spaces named {name!r} dim {dim} of {node.name}, "
                                   "which is not a parameter of it with that dimension")
            if found is None:
                raise PruningError(f"{node.name}: its pruner prunes {name} as a raw parameter, and no installed plugin "
                                   "prunes raw parameters (pruneframe's built-in 'parameter' plugin is disabled?)")
            param = Node(f"{node.name}.{name}", tensor, found.pruner, found.plugin, kind="parameter", pruning_dim=dim % tensor.dim())
            space = Space(param, "out", trace.n_ids, tensor.shape[dim])
            trace.n_ids += space.size
            param.out_space = space
            trace.nodes.append(param)
            trace.spaces.append(space)
            added.append(param)
    return added


def _leaves_stale_tensors(module: nn.Module, pruner: Any) -> bool:
    """Whether one of ``module``'s own tensors is sized like its channels but shrinks neither when a shape-only copy
    loses an output channel nor when it loses an input channel. A pruner that cannot run on the copy counts as such."""
    sizes, shrunk = set(), set()
    for kind in ("out", "in"):
        try:
            n = pruner.get_out_channels(module) if kind == "out" else pruner.get_in_channels(module)
        except Exception:  # noqa: BLE001 - a pruner that cannot say is checked by running the model instead
            return True
        if not n or n < 2:
            continue
        sizes.add(n)
        twin = copy.copy(module)  # its own dicts, tensors on the meta device: no memory, no arithmetic
        twin.__dict__ = dict(module.__dict__)
        twin._parameters = {k: None if v is None else nn.Parameter(torch.empty_like(v, device="meta"), v.requires_grad)
                            for k, v in module._parameters.items()}
        twin._buffers = {k: None if v is None else torch.empty_like(v, device="meta") for k, v in module._buffers.items()}
        try:
            (pruner.prune_out_channels if kind == "out" else pruner.prune_in_channels)(twin, [0])
        except Exception:  # noqa: BLE001 - as above
            return True
        tensors = {**module._parameters, **module._buffers}
        shrunk |= {k for k, v in [*twin._parameters.items(), *twin._buffers.items()]
                   if v is not None and tensors.get(k) is not None and tuple(v.shape) != tuple(tensors[k].shape)}
    return any(v is not None and v.dim() and k not in shrunk and any(n in v.shape for n in sizes)
               for k, v in {**module._parameters, **module._buffers}.items())
