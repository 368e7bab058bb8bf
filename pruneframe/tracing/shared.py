"""Parameters that several layers share (tied weights) couple those layers' channels.

When ``lm_head.weight is embed_tokens.weight``, removing hidden channel 5 from
one removes it from the other: whatever the data flow says, the two layers'
channels along each dimension of the shared tensor are one. A layer pruner
whose table (``DeclarativeLayerPruner.tensors``) says which dimension of the
tensor holds which of its channels is coupled along it; a dimension some
sharer cannot follow (no channels of its own there, or a pruner without a
table) keeps its channels.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch

from ..graph.node import Node, Space
from ..layer_pruner import DeclarativeLayerPruner


def _dims_of(node: Node, name: str) -> dict[int, Space] | None:
    """Which channel space of ``node`` each dimension of its tensor ``name`` holds; None when its pruner does not say."""
    pruner = node.pruner
    if not isinstance(pruner, DeclarativeLayerPruner):
        return None
    spec = next((s for s in pruner.tensors if s.name == name), None)
    if spec is None:
        return None
    dims: dict[int, Space] = {}
    if spec.out is not None and node.out_space is not None:
        dims[spec.out] = node.out_space
    if spec.in_ is not None:
        space = node.out_space if pruner.coupled else node.in_space
        if space is not None:
            dims[spec.in_] = space
    return dims


def shared_parameters(leaves: dict[Any, Node]) -> dict[int, tuple[torch.Tensor, list[tuple[Node, str]]]]:
    """Every parameter held by more than one leaf layer: the tensor and (layer, attribute name) of each holder."""
    holders: dict[int, tuple[torch.Tensor, list[tuple[Node, str]]]] = {}
    for node in leaves.values():
        for name, p in node.module.named_parameters(remove_duplicate=False):
            holders.setdefault(id(p), (p, []))[1].append((node, name))
    return {k: v for k, v in holders.items() if len({id(n) for n, _ in v[1]}) > 1}


def tie_shared(recorder: Any, leaves: dict[Any, Node]) -> None:
    """Couple, along each dimension of every shared parameter, the channels its holders have there; block the rest."""
    for p, holders in shared_parameters(leaves).values():
        names = ", ".join(f"{node.name}.{name}" for node, name in holders)
        per_dim: dict[int, list[Space]] = defaultdict(list)
        unknown = []
        for node, name in holders:
            dims = _dims_of(node, name)
            if dims is None:
                unknown.append(node)
                continue
            for d, space in dims.items():
                per_dim[d % p.dim()].append(space)
        if unknown:
            reason = (f"its layer shares a parameter ({names}) and the pruner of {unknown[0].name} does not say which "
                      "dimension of it holds which channels")
            for node, _ in holders:
                for space in (node.out_space, node.in_space):
                    if space is not None and space.size:
                        recorder.block(space.ids(), reason)
            continue
        for d, spaces in per_dim.items():
            sized = [s for s in spaces if s.size == p.shape[d]]
            holders_here = {id(s.node) for s in sized}
            if len(holders_here) < len({id(n) for n, _ in holders}) or len(sized) < len(spaces):
                reason = f"dimension {d} of a parameter shared by {names} holds channels not every holder can lose"
                for s in spaces:
                    if s.size:
                        recorder.block(s.ids(), reason)
                continue
            first = sized[0].ids()
            for other in sized[1:]:
                recorder.couple(first, other.ids())
