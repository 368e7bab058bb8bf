"""Time the job users run -- MetaPruner(model, inputs, MagnitudeImportance(p=2), pruning_ratio=0.5) and step() --
and the graph build alone, for pruneframe and Torch-Pruning 1.6.1, side by side.

Torch-Pruning lives only in the benchmark environment, never in pruneframe's:
install it into a directory of its own and name it; only its worker processes
get that directory on their path:

    pip install --no-deps --target /tmp/tp torch-pruning==1.6.1
    python benchmarks/end_to_end.py --torch-pruning-path /tmp/tp --repeats 5 --markdown docs/benchmarks.md

Every measurement is a fresh process: the library is imported and the model
built before the clock starts. The two libraries alternate within each
repeat, and the table quotes medians. "prune" is MetaPruner's construction
plus one step (pruneframe's plugin loading included: it happens there);
"build" is build_dependency + get_all_groups. "runs" says whether the pruned
model still ran on the example inputs afterwards.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time

from graph_build_speed import build_case, forward_tensor, write_between_markers

CASES = ["resnet50", "vit_b_16", "bert-base", "llama-d16"]
LIBRARIES = ["pruneframe", "torch_pruning"]
MODES = ["prune", "build"]
BEGIN, END = "<!-- end-to-end: begin -->", "<!-- end-to-end: end -->"


def worker(library: str, case: str, mode: str) -> dict:
    import warnings

    import torch
    from torch import nn

    warnings.simplefilter("ignore")
    if library == "pruneframe":
        import pruneframe as tp
    else:
        import torch_pruning as tp
    model, inputs, heads = build_case(case)
    extra = {} if library == "pruneframe" else {"root_module_types": (nn.Conv2d, nn.Linear)}
    start = time.perf_counter()
    if mode == "prune":
        pruner = tp.pruner.MetaPruner(model, inputs, importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=0.5,
                                      ignored_layers=heads, forward_fn=forward_tensor, **extra)
        pruner.step()
        groups = None
    else:
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=inputs, forward_fn=forward_tensor)
        groups = len(list(graph.get_all_groups(ignored_layers=heads, **extra)))
    seconds = time.perf_counter() - start
    try:
        with torch.no_grad():
            forward_tensor(model, inputs)
        runs = True
    except Exception:  # a prune that broke the model: reported in the table, not hidden
        runs = False
    params = sum(p.numel() for p in model.parameters())
    return {"seconds": seconds, "groups": groups, "runs": runs, "params": params}


def run_one(library: str, case: str, mode: str, tp_path: str | None) -> dict:
    env = dict(os.environ)
    if library == "torch_pruning" and tp_path:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (tp_path, env.get("PYTHONPATH", "")) if p)
    proc = subprocess.run([sys.executable, __file__, "--worker", library, case, mode], capture_output=True, text=True,
                          timeout=3600, env=env)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", nargs=3, metavar=("LIBRARY", "CASE", "MODE"), help=argparse.SUPPRESS)
    parser.add_argument("--cases", nargs="*", default=CASES)
    parser.add_argument("--modes", nargs="*", default=MODES)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--torch-pruning-path", help="directory holding torch_pruning (pip install --target DIR)")
    parser.add_argument("--markdown", help="write the table to this Markdown file, between its end-to-end markers")
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(*args.worker)))
        return 0

    results: dict[tuple[str, str, str], list[dict]] = {}
    for rep in range(args.repeats):
        for case in args.cases:
            for mode in args.modes:
                order = LIBRARIES if rep % 2 == 0 else LIBRARIES[::-1]  # alternate who goes first
                for lib in order:
                    r = run_one(lib, case, mode, args.torch_pruning_path)
                    results.setdefault((lib, case, mode), []).append(r)
                    print(f"repeat {rep + 1} {case:10s} {mode:6s} {lib:14s} {r}", file=sys.stderr, flush=True)

    def median(lib: str, case: str, mode: str) -> float | None:
        times = [r["seconds"] for r in results.get((lib, case, mode), []) if "seconds" in r]
        return statistics.median(times) if times else None

    def first(lib: str, case: str, mode: str, key: str):
        return next((r.get(key) for r in results.get((lib, case, mode), []) if key in r), None)

    lines = ["| model | what | pruneframe s | Torch-Pruning s | ratio pruneframe / Torch-Pruning | pruned model runs (pf / TP) |",
             "|---|---|---:|---:|---:|---|"]
    for case in args.cases:
        for mode in args.modes:
            ours, theirs = median("pruneframe", case, mode), median("torch_pruning", case, mode)
            err = first("torch_pruning", case, mode, "error") or first("pruneframe", case, mode, "error")
            ratio = f"{ours / theirs:.2f}" if ours and theirs else f"- ({err})"
            runs = "/".join({True: "yes", False: "no", None: "-"}[first(lib, case, mode, "runs")] for lib in LIBRARIES)
            fmt = lambda v: f"{v:.3f}" if v is not None else "failed"  # noqa: E731
            lines.append(f"| {case} | {mode} | {fmt(ours)} | {fmt(theirs)} | {ratio} | {runs if mode == 'prune' else '-'} |")
    table = "\n".join(lines)
    print(table)
    if args.markdown:
        import torch

        from importlib.metadata import version

        versions = f"torch {torch.__version__}, Python {platform.python_version()}, {platform.machine()}, " \
                   f"transformers {version('transformers')}, torch-pruning 1.6.1"
        measured = (f"Measured {datetime.date.today()} on the project's machine (2 shared CPU cores, no GPU; {versions}) by "
                    f"`python benchmarks/end_to_end.py --repeats {args.repeats} --markdown docs/benchmarks.md`, medians of "
                    f"{args.repeats} fresh processes each.\n\n{table}\n")
        write_between_markers(args.markdown, measured, BEGIN, END)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
