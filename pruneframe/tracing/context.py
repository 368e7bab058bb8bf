"""``OpContext``: what an op handler may read and write while the trace runs."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Sequence

import torch

from ..runtime import tensors_in
from . import labels as L

if TYPE_CHECKING:
    from .recorder import Recorder


class OpContext:
    """What an op handler may read and write while the trace runs.

    Labels (see ``pruneframe.tracing.labels``) are int64 tensors broadcastable to the
    traced tensor; ``None`` means the tensor carries no channel (a constant,
    which cannot shrink).
    """

    def __init__(self, recorder: "Recorder"):
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

    def tie_to_rows(self, ids: torch.Tensor, rows: torch.Tensor) -> None:
        """Channel ``ids[p]`` exists while any channel of ``rows[p]`` does: it goes only when all of them go.

        What a broadcast operand needs: a per-head-dim norm weight multiplied
        into every head stays while any head is left, and goes with dim ``d``
        only when ``d`` goes from every head (``rows`` is ``(len(ids), k)``).
        Resolved with the couplings, like ``tie_slices``: a row that one prune
        removes whole takes the channel with it; any other row keeps it.
        """
        keep = ids >= 0
        if bool(keep.any()):
            self._r.ties.append((ids[keep], [rows[keep]]))

    def sized_by_code(self, ids: torch.Tensor | None) -> None:
        """Channels in ``ids`` met an op whose sizes the model's code passed in (a view, an expand, a split).

        If the code computed those sizes from the tensor, a prune follows; if it
        wrote a literal, the prune breaks the model, and no trace can tell which.
        A prune touching such channels is checked by running the model once
        more on the example inputs (``build_dependency(verify_prunes=...)``).
        """
        if ids is not None:
            self._r.sized_by_code(ids)

    def slice_follows_prunes(self, t: torch.Tensor, dim: int, start: Any, end: Any) -> bool:
        """Whether a step-1 slice ``t[..., start:end, ...]`` along ``dim`` may keep its channels prunable.

        The slice is recorded, and a prune of its channels is checked by running the pruned model, which must
        slice the same tensor with the bounds the surviving channels give (``pruneframe.graph.slice_bounds``):
        a literal bound is caught there. False when that cannot be checked (the label varies along other
        dimensions too, or holds ids of no layer, or prunes are never run-checked): then pin ``dim``.
        """
        ids = self.ids(t)
        if ids is None or not ids.dim() or ids.shape[dim] == 1:
            return True
        return self._r.record_slice(ids, dim, start, end)

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
