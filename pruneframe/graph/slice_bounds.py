"""Slices along channels, verified: the bounds a prune implies, and the run that checks the pruned model has them.

A slice of a tensor that holds channels (Phi-3's fused ``qkv[..., :query_pos]``) stays right after a prune only
if the code computes its bounds from something the prune updates (a config, a stored head count, the tensor's
own width). A literal (``x[:, :64]``) would select other channels, and the model would still run. So the trace
records each such slice (``TracedSlice``), and the run check after a prune of its channels also records the slice
calls of the pruned model (``SliceCalls``): each traced slice must appear with the bounds the surviving channels
give it (``expected``), else the prune is refused like one that stops the model running (``SliceCheck``).
"""
from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import attrs
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ..runtime import Forward, default_forward
from .node import Space

if TYPE_CHECKING:
    from ..tracing import TraceResult

aten = torch.ops.aten
Signature = tuple[int, int, int, int, int]  # ndim, dim, size along dim, start, end (all normalised)


@attrs.frozen
class TracedSlice:
    """``x[..., start:end, ...]`` along ``dim`` of an ``ndim``-dim tensor, whose positions along ``dim`` are channels ``ids``."""

    ids: torch.Tensor  # 1-D, one channel id per position along dim (<= 0: no channel, never pruned)
    ndim: int
    dim: int
    start: int
    end: int
    what: str  # whose channels, for messages: "the output of layers.0.attn.qkv_proj"


def normalised(size: int, start: Any, end: Any) -> tuple[int, int]:
    """``start`` and ``end`` of a step-1 slice of a dimension of ``size``, as Python resolves them (None, negative, too far)."""
    first, stop, _ = slice(start, end).indices(size)
    return first, max(first, stop)


def slice_to_check(spaces: Sequence[Space], never_pruned: Iterable[int], ids: torch.Tensor, dim: int, start: Any,
                   end: Any) -> tuple[bool, TracedSlice | None]:
    """Whether a step-1 slice along ``dim`` of label ``ids`` can be checked, and what to record for it (None: nothing moves).

    Only a label that varies along ``dim`` alone, holding channels of ``spaces`` or ids that are never pruned
    (``never_pruned``, and ids <= 0), can be: its bounds after a prune are the surviving channels before and inside them.
    """
    if any(n > 1 for d, n in enumerate(ids.shape) if d != dim):
        return False, None
    line = ids.flatten()
    found = owners(spaces, line)
    if bool(((line > 0) & (found < 0) & ~torch.isin(line, torch.tensor(list(never_pruned), dtype=torch.long))).any()):
        return False, None  # the ids of a product's slices (tie_slices): no space says which of them survive
    names = [f"{'the output' if spaces[k].kind == 'out' else 'the input'} of {spaces[k].node.name}"
             for k in torch.unique(found[found >= 0]).tolist()]
    if not names:
        return True, None  # nothing along dim is ever pruned: the bounds cannot move
    what = " and ".join(names[:3]) + (" ..." if len(names) > 3 else "")
    return True, TracedSlice(line, ids.dim(), dim, *normalised(line.numel(), start, end), what)


def signature_of(traced: TracedSlice, alive: torch.Tensor) -> Signature:
    """The slice as the pruned model must make it: ``alive`` says, per position along the dim, whether it survives."""
    before = int(alive[:traced.start].sum())
    return traced.ndim, traced.dim, int(alive.sum()), before, before + int(alive[traced.start:traced.end].sum())


def owners(spaces: Sequence[Space], ids: torch.Tensor) -> torch.Tensor:
    """The index in ``spaces`` (sorted by base, as traced) of the space holding each of ``ids``, -1 for ids of none."""
    if not spaces:
        return torch.full_like(ids, -1)
    bases = torch.tensor([s.base for s in spaces], dtype=torch.long)
    ends = bases + torch.tensor([s.size for s in spaces], dtype=torch.long)
    found = torch.searchsorted(bases, ids.contiguous(), right=True) - 1  # (a traced label is often a strided view)
    inside = (found >= 0) & (ids < ends[found.clamp(min=0)])
    return torch.where(inside, found, -1)


def alive_of(spaces: Sequence[Space], ids: torch.Tensor, gone: torch.Tensor) -> torch.Tensor:
    """Whether each of ``ids`` survives a prune: alive in its space and not ``gone`` (a mask of all ids); ids of no space do."""
    alive = ~gone[ids.clamp(min=0)] | (ids <= 0)
    found = owners(spaces, ids)
    for k in torch.unique(found[found >= 0]).tolist():
        inside = found == k
        alive[inside] &= spaces[k].alive[ids[inside] - spaces[k].base]
    return alive


def expected(trace: "TraceResult", pruned: torch.Tensor) -> list[tuple[TracedSlice, Signature]]:
    """Every traced slice the prune of ids ``pruned`` moves, with the signature the pruned model's slice must have."""
    if not trace.slices:
        return []
    gone = torch.zeros(trace.n_ids, dtype=torch.bool)  # one mask, not a search of pruned (an LLM's hidden size) per slice
    gone[pruned] = True
    return [(traced, signature_of(traced, alive_of(trace.spaces, traced.ids, gone)))
            for traced in trace.slices if bool(gone[traced.ids.clamp(min=0)].any())]


class SliceCalls(TorchDispatchMode):
    """Counts the ``aten.slice`` calls of a run by signature; with real tensors and inside a ``FakeTensorMode`` alike."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: Counter[Signature] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.overloadpacket in (aten.slice, aten.slice_copy) and isinstance(args[0], torch.Tensor):
            x = args[0]
            dim = (args[1] if len(args) > 1 else kwargs.get("dim", 0)) % max(x.dim(), 1)
            step = args[4] if len(args) > 4 else kwargs.get("step", 1)
            if step == 1:
                size = int(x.shape[dim])
                first, stop = normalised(size, args[2] if len(args) > 2 else kwargs.get("start"),
                                         args[3] if len(args) > 3 else kwargs.get("end"))
                self.seen[(x.dim(), dim, size, first, stop)] += 1
        return func(*args, **kwargs)


def _why(traced: TracedSlice, want: Signature, seen: Counter[Signature]) -> str:
    ndim, dim, size, start, end = want
    literal = normalised(size, traced.start, traced.end)  # the traced bounds, unchanged, on the pruned size
    if literal == (0, size) or seen[(ndim, dim, size, *literal)]:  # (a whole slice is no call at all)
        return (f"a slice of {traced.what} along dim {dim} kept its bounds [{traced.start}:{traced.end}] although the prune "
                f"moved them to [{start}:{end}]: the code slices with a literal")
    return (f"no slice of {traced.what} along dim {dim} has the bounds [{start}:{end}] the prune moves "
            f"[{traced.start}:{traced.end}] to: the code computes them from something the prune did not update")


class SliceCheck:
    """A run check's forward that also records the slice calls (``forward``), and what they say once it ran (``verdict``).

    Only the traced slices the prune of ``pruned`` moves are looked for; with none, the forward is the plain one.
    """

    def __init__(self, forward_fn: Forward | None, trace: "TraceResult", pruned: torch.Tensor):
        self.moved = expected(trace, pruned)
        self.calls = SliceCalls()
        self._forward = forward_fn or default_forward

    def forward(self, model: Any, inputs: Any) -> Any:
        if not self.moved:
            return self._forward(model, inputs)
        with self.calls:
            return self._forward(model, inputs)

    def verdict(self) -> str | None:
        """None if the run made every moved slice with its new bounds (as often as the trace did), else why not."""
        moved = [(traced, want) for traced, want in self.moved if want[3:] != (0, want[2])]  # a whole slice makes no call
        wanted = Counter(want for _, want in moved)
        for traced, want in moved:
            if self.calls.seen[want] < wanted[want]:
                return _why(traced, want, self.calls.seen)
        return None
