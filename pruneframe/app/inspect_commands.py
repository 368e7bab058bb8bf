"""``pruneframe inspect`` and ``pruneframe graph``: a model's groups and what blocks them, without pruning.

Both take the model specs of ``pruneframe prune`` (``torchvision:NAME``,
``timm:NAME``, ``hf:CONFIG-or-path``, ``FILE.py:factory``) with
``--input-shape`` and ``--ignore``, and trace the model once. ``add_subcommands``
adds them to the command line's subparsers; nothing heavy is imported until one
runs.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .arguments import MODEL_HELP, model_options, out_problem

FORMATS = ("dot", "mermaid")


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help=MODEL_HELP)
    model_options(parser)


def add_subcommands(subparsers: Any) -> None:
    """Add ``inspect`` and ``graph`` to ``subparsers`` (what ``ArgumentParser.add_subparsers()`` returned)."""
    p = subparsers.add_parser(
        "inspect", help="print a model's groups and the layers kept whole, with why, without pruning",
        description="Trace MODEL once and print its groups (root layer, kind, channels, members) and the layer sides no "
                    "prune may shrink, each with the reason. Nothing is pruned.")
    _model_arguments(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.set_defaults(run=run_inspect)
    p = subparsers.add_parser(
        "graph", help="write the dependency graph with its groups as Graphviz dot or a Mermaid flowchart",
        description="Trace MODEL once and write its dependency graph: one cluster per group, its layer sides as nodes, "
                    "the couplings as edges. Nothing is pruned.")
    _model_arguments(p)
    p.add_argument("--format", choices=FORMATS, default="dot", help="dot (Graphviz, the default) or mermaid")
    p.add_argument("--out", default=None, help="file to write (default: standard output)")
    p.set_defaults(run=run_graph)


class _Refused(Exception):
    """Bad input, already worded for the user."""


def _describe(inputs: Any) -> str:
    import torch

    if isinstance(inputs, torch.Tensor):
        return "x".join(map(str, inputs.shape))
    if isinstance(inputs, dict):
        return ", ".join(f"{k} {_describe(v)}" for k, v in inputs.items())
    if isinstance(inputs, (tuple, list)):
        return ", ".join(_describe(v) for v in inputs)
    return type(inputs).__name__


def trace_model(spec: str, input_shape: tuple[int, ...] | None, ignore: list[str]) -> tuple[Any, Any, str]:
    """The model ``spec`` names, its graph (traced once, ``ignore`` layers kept whole) and a description of its inputs."""
    from ..graph import DependencyGraph
    from .model_sources import ModelSourceError, build

    try:
        built = build(spec, input_shape)
    except ModelSourceError as exc:
        raise _Refused(str(exc)) from exc
    model, inputs, forward_fn = built.model, built.inputs, built.forward_fn
    names = dict(model.named_modules())
    missing = [n for n in ignore if n not in names]
    if missing:
        raise _Refused(f"--ignore {', '.join(missing)}: no such layer in {spec}; the names are those of "
                       "model.named_modules(), e.g. layer4.1.conv2")
    try:
        graph = DependencyGraph().build_dependency(model, inputs, forward_fn=forward_fn, ignored_layers=[names[n] for n in ignore])
    except ValueError as exc:  # the model does not run on these inputs (--input-shape)
        raise _Refused(str(exc)) from exc
    return model, graph, _describe(inputs)


def _names(given: list[str]) -> list[str]:
    return [name for item in given for name in item.split(",") if name]


def inspection(graph: Any) -> dict[str, Any]:
    """What ``pruneframe inspect --json`` prints: every group, the layer sides kept whole, the ops no plugin handles."""
    from .report import channel_groups

    groups = [{"root": s.root, "type": s.type, "kind": s.kind, "channels": s.channels, "blocks": s.blocks,
               "status": s.status, "reasons": list(s.reasons),
               "members": [{"name": m.name, "type": m.type, "kind": m.kind, "channels": m.channels} for m in s.members]}
              for s in channel_groups(graph)]
    kept = [{"name": r.name, "type": r.type, "kind": r.kind, "channels": r.channels, "reasons": list(r.reasons)}
            for r in graph.kept_whole()]
    return {"groups": groups, "kept_whole": kept, "unsupported_ops": graph.unsupported_ops}


def run_inspect(args: argparse.Namespace) -> int:
    """``pruneframe inspect MODEL``: print the groups and the layers kept whole (tables, or JSON with ``--json``)."""
    try:
        _, graph, inputs = trace_model(args.model, args.input_shape, _names(args.ignore))
    except _Refused as exc:
        print(f"pruneframe inspect: {exc}", file=sys.stderr)
        return 2
    from .report import channel_groups, groups_table, kept_whole_table

    if args.json:
        found = inspection(graph)
        json.dump({"model": args.model, "inputs": inputs, **found}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    summaries = channel_groups(graph)
    counts: dict[str, int] = {}
    for s in summaries:
        counts[s.status] = counts.get(s.status, 0) + 1
    layers = len({id(node) for node in graph.module2node.values()})
    print(f"{args.model} (example input {inputs}): {layers} layers and parameters, {len(summaries)} groups ("
          + ", ".join(f"{n} {status}" for status, n in counts.items()) + ")")
    print()
    print(groups_table(summaries))
    print()
    print(kept_whole_table(graph.kept_whole()))
    ops = graph.unsupported_ops
    if ops:
        print()
        print("Ops no plugin handles (write an op plugin to prune across them): "
              + ", ".join(f"{op} (x{n})" for op, n in sorted(ops.items())))
    return 0


def run_graph(args: argparse.Namespace) -> int:
    """``pruneframe graph MODEL``: write the dependency graph with its groups as dot or Mermaid."""
    problem = out_problem(args.out, "graph.dot") if args.out is not None else None
    if problem:
        print(f"pruneframe graph: {problem}", file=sys.stderr)
        return 2
    try:
        _, graph, _ = trace_model(args.model, args.input_shape, _names(args.ignore))
    except _Refused as exc:
        print(f"pruneframe graph: {exc}", file=sys.stderr)
        return 2
    from .graph_export import FORMATS as RENDERERS
    from .graph_export import picture

    pic = picture(graph)
    text = RENDERERS[args.format](pic)
    if args.out is None:
        sys.stdout.write(text)
        return 0
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"wrote {args.out}: {len(pic.clusters)} groups, {len(pic.nodes)} layer sides, {len(pic.edges)} edges ({args.format})")
    return 0


__all__ = ["add_subcommands", "inspection", "run_graph", "run_inspect", "trace_model"]
