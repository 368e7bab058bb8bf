"""Pictures of a dependency graph as adjacency matrices: ``draw_computational_graph``, ``draw_dependency_graph``, ``draw_groups``.

Torch-Pruning's drawings, read from pruneframe's public graph: every node of
``DG.module2node`` (layers and raw parameters, in graph order) and its
channel spaces. They need matplotlib, which pruneframe does not depend on
(``pip install matplotlib``). Each saves the picture to ``save_as`` and
returns ``(figure, axes)``; the matrix is ``axes.images[0].get_array()``.

- ``draw_computational_graph``: N x N, symmetric; (a, b) is set when the
  output channels of node a reach the input channels of node b (directly or
  through ops that keep channels: activations, adds, concatenations, ...).
- ``draw_dependency_graph``: 2N x 2N over channel spaces, row/column ``2k``
  the inputs of node k and ``2k + 1`` its outputs; (s, t) is set when
  pruning channels of space s prunes channels of space t.
- ``draw_groups``: 2N x 2N likewise, for the groups a pruner would prune
  (``DG.get_all_groups()``): every two spaces of one group are set.

pruneframe couples channels by traced connected components rather than by a
chain of direct dependencies, so the dependency graph shows every space a
prune reaches, not only its neighbours.
"""
from __future__ import annotations

import os
from typing import Any

import torch

_FILL = 10.0


def _figure_class() -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError(
            "tp.utils.draw_* draw with matplotlib, which is not installed (pruneframe does not depend on it): "
            "pip install matplotlib"
        ) from exc
    return Figure


def _check(DG: Any, save_as: Any) -> list[Any]:
    nodes = list(getattr(DG, "module2node", {}).values())
    if not nodes:
        raise ValueError("the dependency graph is empty: call DG.build_dependency(model, example_inputs) before drawing it")
    if not isinstance(save_as, (str, os.PathLike)):
        raise TypeError(f"save_as must be a file path such as 'graph.png', not {type(save_as).__name__}")
    folder = os.path.dirname(os.fspath(save_as))
    if folder and not os.path.isdir(folder):
        raise FileNotFoundError(f"cannot save to {os.fspath(save_as)!r}: the folder {folder!r} does not exist")
    return nodes


def _reach(DG: Any, node: Any, kind: str) -> list[tuple[Any, str]]:
    """Every (node, kind) whose channels go when all channels of ``node``'s ``kind`` space go."""
    space = node.space(kind)
    if space is None or space.current_size == 0:
        return []
    fn = node.pruner.prune_out_channels if kind == "out" else node.pruner.prune_in_channels
    group = DG.get_pruning_group(node.module, fn, list(range(space.current_size)))
    return [(s.node, s.kind) for s, _ in group.touched]


def _draw(matrix: torch.Tensor, save_as: Any, title: str | None, figsize: Any, dpi: int, cmap: Any) -> tuple[Any, Any]:
    Figure = _figure_class()
    fig = Figure(figsize=figsize)
    ax = fig.subplots()
    ax.imshow(matrix.numpy(), cmap=cmap if cmap is not None else "Blues")
    if title is not None:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(save_as, dpi=dpi)
    return fig, ax


def _canvas(DG: Any, save_as: Any, slots_per_node: int) -> tuple[list[Any], dict[int, int], torch.Tensor]:
    """The nodes drawn, each one's position, and an empty square matrix of ``slots_per_node`` rows per node."""
    nodes = _check(DG, save_as)
    _figure_class()  # before the work: say at once if matplotlib is missing
    size = slots_per_node * len(nodes)
    return nodes, {id(n): k for k, n in enumerate(nodes)}, torch.zeros(size, size)


def _slot(position: dict[int, int], node: Any, kind: str) -> int:
    return 2 * position[id(node)] + (1 if kind == "out" else 0)


def draw_computational_graph(DG: Any, save_as: Any, title: str | None = "Computational Graph", figsize: Any = (16, 16),
                             dpi: int = 200, cmap: Any = None) -> tuple[Any, Any]:
    """Save an N x N picture of which node's outputs reach which node's inputs; returns ``(figure, axes)``."""
    nodes, position, matrix = _canvas(DG, save_as, 1)
    for a, node in enumerate(nodes):
        for other, kind in _reach(DG, node, "out"):
            b = position.get(id(other))
            if kind == "in" and b is not None and b != a:
                matrix[a, b] = matrix[b, a] = 1.0
    return _draw(matrix, save_as, title, figsize, dpi, cmap)


def draw_dependency_graph(DG: Any, save_as: Any, title: str | None = "Group", figsize: Any = (16, 16), dpi: int = 200,
                          cmap: Any = None) -> tuple[Any, Any]:
    """Save a 2N x 2N picture of which channel space's prune reaches which; returns ``(figure, axes)``."""
    nodes, position, matrix = _canvas(DG, save_as, 2)
    for node in nodes:
        for kind in ("in", "out"):
            for other, other_kind in _reach(DG, node, kind):
                if id(other) in position:
                    matrix[_slot(position, node, kind), _slot(position, other, other_kind)] = _FILL
        if node.kind == "layer" and node.in_out_coupled and node.in_space is not None and node.in_space.size:
            matrix[_slot(position, node, "in"), _slot(position, node, "out")] = _FILL
    return _draw(matrix, save_as, title, figsize, dpi, cmap)


def draw_groups(DG: Any, save_as: Any, title: str | None = "Group", figsize: Any = (16, 16), dpi: int = 200,
                cmap: Any = None) -> tuple[Any, Any]:
    """Save a 2N x 2N picture of the prunable groups, every two spaces of a group set; returns ``(figure, axes)``."""
    nodes, position, matrix = _canvas(DG, save_as, 2)
    for group in DG.get_all_groups():
        slots = sorted({_slot(position, s.node, s.kind) for s, _ in group.touched if id(s.node) in position})
        index = torch.tensor(slots, dtype=torch.long)
        matrix[index.view(-1, 1), index.view(1, -1)] = _FILL
    return _draw(matrix, save_as, title, figsize, dpi, cmap)


__all__ = ["draw_computational_graph", "draw_dependency_graph", "draw_groups"]
