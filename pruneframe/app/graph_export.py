"""A dependency graph drawn with its groups: Graphviz dot or a Mermaid flowchart.

Each group is one cluster (a ``subgraph``); its nodes are the layer sides it
holds ("conv1 out 64"), a side split between groups (the input of a layer after
a ``cat``) appearing once in each with its share. Edges are the couplings the
trace recorded: solid arrows from a layer's output to the input that reads it,
dashed lines between sides tied side by side (the operands of an add, two
layers reading one tensor), dotted arrows through a layer from its input side
to its output side. Sides tied only through an attention product sit in their
group without an edge.

Example::

    graph = pruneframe.DependencyGraph().build_dependency(model, example_inputs)
    open("model.dot", "w").write(to_dot(picture(graph)))
"""
from __future__ import annotations

from typing import Sequence

import attrs
import torch

from ..graph import DependencyGraph
from .report import MODEL, GroupSummary, channel_groups

FEEDS, SIDE_BY_SIDE, THROUGH = "feeds", "side by side", "through"
COLOURS = {"prunable": "#2e7d32", "blocked": "#c62828", "no root": "#757575"}


@attrs.frozen
class PictureNode:
    """One layer side in one group: ``id`` is unique and safe in both formats (letters, digits, underscores)."""

    id: str
    label: tuple[str, ...]  # lines
    cluster: int


@attrs.frozen
class Picture:
    """Groups (clusters, with a title and status), their nodes and the edges between nodes."""

    clusters: tuple[tuple[str, str], ...]  # (title, status) per group
    nodes: tuple[PictureNode, ...]
    edges: tuple[tuple[str, str, str], ...]  # (from id, to id, FEEDS / SIDE_BY_SIDE / THROUGH)


def _title(k: int, s: GroupSummary) -> str:
    head = f"group {k}: {s.root or MODEL} {s.kind}, {s.channels} channel{'' if s.channels == 1 else 's'}"
    if s.status == "blocked":
        return f"{head}, blocked: " + "; ".join(s.reasons)
    return f"{head}, {s.status}"


def picture(graph: DependencyGraph, summaries: Sequence[GroupSummary] | None = None) -> Picture:
    """The groups of ``graph`` (``channel_groups(graph)`` unless given) as clusters of layer sides, with the couplings."""
    summaries = channel_groups(graph) if summaries is None else summaries
    nodes: list[PictureNode] = []
    piece_of: dict[tuple[int, int], str] = {}  # (group, id(space)) -> node id
    in_groups: dict[int, list[tuple[int, torch.Tensor]]] = {}  # id(space) -> [(group, traced positions)]
    for k, s in enumerate(summaries):
        touched = s.group.touched
        for space, traced in touched:  # output sides first: a batch norm's input side is drawn as its output side
            in_groups.setdefault(id(space), []).append((k, traced))
        for space, traced in sorted(touched, key=lambda item: item[0].kind != "out"):
            node = space.node
            if space.kind == "in" and node.in_out_coupled and node.out_space is not None and (k, id(node.out_space)) in piece_of:
                piece_of[(k, id(space))] = piece_of[(k, id(node.out_space))]
                continue
            node_id = f"g{k}n{len(nodes)}"
            share = str(traced.numel()) if traced.numel() == space.size else f"{traced.numel()} of {space.size}"
            nodes.append(PictureNode(node_id, (f"{node.name or MODEL} ({node.type})", f"{space.kind} {share}"), k))
            piece_of[(k, id(space))] = node_id
    edges: dict[tuple[str, str, str], None] = {}
    for tie in graph.channel_ties():
        for k, traced_a in in_groups.get(id(tie.a), []):
            b = piece_of.get((k, id(tie.b)))
            traced_b = next((t for g, t in in_groups.get(id(tie.b), []) if g == k), None)
            if b is None or traced_b is None:
                continue
            if not bool((torch.isin(tie.a_positions, traced_a) & torch.isin(tie.b_positions, traced_b)).any()):
                continue
            a = piece_of[(k, id(tie.a))]
            if a == b:
                continue
            if tie.a.kind == tie.b.kind:
                edges[(a, b, SIDE_BY_SIDE)] = None
            else:
                edges[(a, b, FEEDS) if tie.a.kind == "out" else (b, a, FEEDS)] = None
    for node in {id(n): n for n in graph.module2node.values()}.values():
        if node.in_out_coupled or node.in_space is None or node.out_space is None:
            continue
        ins = [piece_of[(k, id(node.in_space))] for k, _ in in_groups.get(id(node.in_space), [])]
        outs = [piece_of[(k, id(node.out_space))] for k, _ in in_groups.get(id(node.out_space), [])]
        for a in ins:
            for b in outs:
                edges[(a, b, THROUGH)] = None
    return Picture(tuple((_title(k, s), s.status) for k, s in enumerate(summaries)), tuple(nodes), tuple(edges))


# --- Graphviz dot ------------------------------------------------------------------------------
def _dot_text(text: str) -> str:
    """A double-quoted dot string: backslashes and quotes escaped, newlines as dot's line breaks."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


DOT_EDGES = {FEEDS: "", SIDE_BY_SIDE: " [style=dashed, dir=none]", THROUGH: " [style=dotted, color=\"#9e9e9e\"]"}


def to_dot(pic: Picture, name: str = "pruneframe") -> str:
    """``pic`` as a Graphviz ``digraph``: one ``cluster_<k>`` subgraph per group."""
    lines = [f"digraph {_dot_text(name)} {{", "  graph [rankdir=TB, fontname=\"Helvetica\", fontsize=11];",
             "  node [shape=box, style=rounded, fontname=\"Helvetica\", fontsize=10];"]
    for k, (title, status) in enumerate(pic.clusters):
        lines.append(f"  subgraph cluster_{k} {{")
        lines.append(f"    label={_dot_text(title)}; color={_dot_text(COLOURS[status])}; style=rounded;")
        lines += [f"    {_dot_text(n.id)} [label={_dot_text(chr(10).join(n.label))}];" for n in pic.nodes if n.cluster == k]
        lines.append("  }")
    lines += [f"  {_dot_text(a)} -> {_dot_text(b)}{DOT_EDGES[kind]};" for a, b, kind in pic.edges]
    lines.append("}")
    return "\n".join(lines) + "\n"


# --- Mermaid -----------------------------------------------------------------------------------
def _mermaid_text(text: str) -> str:
    """A quoted Mermaid label: characters Mermaid reads as syntax written as its entity codes."""
    for char, code in (("#", "#35;"), ('"', "#quot;"), ("<", "#lt;"), (">", "#gt;")):
        text = text.replace(char, code)
    return '"' + text.replace("\n", "<br/>") + '"'


MERMAID_EDGES = {FEEDS: "-->", SIDE_BY_SIDE: "---", THROUGH: "-.->"}


def to_mermaid(pic: Picture) -> str:
    """``pic`` as a Mermaid ``flowchart``: one ``subgraph g<k>`` per group."""
    lines = ["flowchart TB"]
    for k, (title, status) in enumerate(pic.clusters):
        lines.append(f"  subgraph g{k} [{_mermaid_text(title)}]")
        lines += [f"    {n.id}[{_mermaid_text(chr(10).join(n.label))}]" for n in pic.nodes if n.cluster == k]
        lines.append("  end")
        lines.append(f"  style g{k} stroke:{COLOURS[status]}")
    lines += [f"  {a} {MERMAID_EDGES[kind]} {b}" for a, b, kind in pic.edges]
    return "\n".join(lines) + "\n"


FORMATS = {"dot": to_dot, "mermaid": to_mermaid}

__all__ = ["FORMATS", "Picture", "PictureNode", "picture", "to_dot", "to_mermaid"]
