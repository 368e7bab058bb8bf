"""Time build_dependency + get_all_groups for pruneframe and Torch-Pruning, side by side.

Run it in an environment that has both (Torch-Pruning only ever lives in the
benchmark environment, never in pruneframe's own):

    pip install -e . torchvision transformers torch-pruning==1.6.1
    python benchmarks/graph_build_speed.py --repeats 5 --markdown docs/benchmarks.md

Every measurement is a fresh process (no warm caches shared between
libraries); the two libraries alternate within each repeat, and the table
quotes medians. The model is built before the clock starts; the clock covers
tracing the model and listing every pruning group.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import subprocess
import sys
import time

CASES = ["resnet50", "vit_b_16", "bert-base", "llama-d8", "llama-d16", "llama-d32", "llama-d64"]
LIBRARIES = ["pruneframe", "torch_pruning"]


def build_case(name: str):
    """The model, its example inputs and the layers to leave out of the groups (the heads)."""
    import torch

    torch.manual_seed(0)
    if name == "resnet50":
        import torchvision

        model = torchvision.models.resnet50(weights=None).eval()
        return model, torch.randn(1, 3, 224, 224), [model.fc]
    if name == "vit_b_16":
        import torchvision

        model = torchvision.models.vit_b_16(weights=None).eval()
        return model, torch.randn(1, 3, 224, 224), [model.heads.head]
    if name == "bert-base":
        from transformers import BertConfig, BertModel

        model = BertModel(BertConfig()).eval()
        return model, {"input_ids": torch.randint(0, 1000, (1, 128))}, []
    if name.startswith("llama-d"):
        from transformers import LlamaConfig, LlamaForCausalLM

        depth = int(name.removeprefix("llama-d"))
        config = LlamaConfig(hidden_size=512, intermediate_size=1376, num_attention_heads=8, num_key_value_heads=2,
                             num_hidden_layers=depth, vocab_size=4096, max_position_embeddings=256)
        model = LlamaForCausalLM(config).eval()
        return model, {"input_ids": torch.randint(0, 4096, (1, 64))}, [model.lm_head]
    raise ValueError(f"unknown case {name!r}; choose from {CASES}")


def forward_tensor(model, inputs):
    """Both libraries get the model's main output as a plain tensor (Torch-Pruning cannot read output objects)."""
    if isinstance(inputs, dict):
        out = model(**inputs, use_cache=False) if "llama" in type(model).__name__.lower() else model(**inputs)
        return out[0]
    return model(inputs)


def worker(library: str, case: str) -> dict:
    import warnings

    import torch
    from torch import nn

    warnings.simplefilter("ignore")
    model, inputs, heads = build_case(case)
    if library == "pruneframe":
        import pruneframe as tp

        tp.get_registry()  # plugin loading is a one-off per process, like an import
        start = time.perf_counter()
        graph = tp.DependencyGraph().build_dependency(model, inputs, forward_fn=forward_tensor)
        groups = list(graph.get_all_groups(ignored_layers=heads))
    else:
        import torch_pruning as tp

        start = time.perf_counter()
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=inputs, forward_fn=forward_tensor)
        groups = list(graph.get_all_groups(ignored_layers=heads, root_module_types=(nn.Conv2d, nn.Linear)))
    seconds = time.perf_counter() - start
    del torch
    return {"seconds": seconds, "groups": len(groups)}


def run_one(library: str, case: str) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--worker", library, case], capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


BEGIN, END = "<!-- measured: begin -->", "<!-- measured: end -->"


def write_between_markers(path: str, text: str, begin: str = BEGIN, end: str = END) -> None:
    """Replace the measured part of ``path`` (between the markers), keeping the prose around it."""
    try:
        with open(path) as f:
            old = f.read()
    except FileNotFoundError:
        old = f"# Benchmarks\n\n{begin}\n{end}\n"
    if begin not in old or end not in old:
        raise SystemExit(f"{path} has no {begin} ... {end} markers to write the measurements between")
    head, rest = old.split(begin, 1)
    _, tail = rest.split(end, 1)
    with open(path, "w") as f:
        f.write(f"{head}{begin}\n{text}{end}{tail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", nargs=2, metavar=("LIBRARY", "CASE"), help=argparse.SUPPRESS)
    parser.add_argument("--cases", nargs="*", default=CASES)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--markdown", help="write the table to this Markdown file")
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(*args.worker)))
        return 0

    results: dict[tuple[str, str], list[dict]] = {(lib, case): [] for lib in LIBRARIES for case in args.cases}
    for rep in range(args.repeats):
        for case in args.cases:
            order = LIBRARIES if rep % 2 == 0 else LIBRARIES[::-1]  # alternate who goes first
            for lib in order:
                r = run_one(lib, case)
                results[(lib, case)].append(r)
                print(f"repeat {rep + 1} {case:10s} {lib:14s} {r}", file=sys.stderr, flush=True)

    def median(lib: str, case: str) -> float | None:
        times = [r["seconds"] for r in results[(lib, case)] if "seconds" in r]
        return statistics.median(times) if times else None

    lines = ["| model | pruneframe groups | pruneframe s (median) | Torch-Pruning groups | Torch-Pruning s (median) | ratio pruneframe / Torch-Pruning |",
             "|---|---:|---:|---:|---:|---:|"]
    for case in args.cases:
        ours, theirs = median("pruneframe", case), median("torch_pruning", case)
        groups = [next((r.get("groups") for r in results[(lib, case)] if "groups" in r), "-") for lib in LIBRARIES]
        err = next((r["error"] for r in results[("torch_pruning", case)] if "error" in r), None)
        theirs_text = f"{theirs:.3f}" if theirs is not None else f"failed: {err}"
        ratio = f"{ours / theirs:.2f}" if ours is not None and theirs else "-"
        lines.append(f"| {case} | {groups[0]} | {ours:.3f} | {groups[1]} | {theirs_text} | {ratio} |" if ours is not None
                     else f"| {case} | - | failed | {groups[1]} | {theirs_text} | - |")
    scaling = []
    for lib in LIBRARIES:
        a, b = median(lib, "llama-d32"), median(lib, "llama-d64")
        if a and b:
            scaling.append(f"- {lib}: time(depth 64) / time(depth 32) = {b / a:.2f}")
    table = "\n".join(lines)
    print(table)
    print("\n".join(scaling))
    if args.markdown:
        import torch

        versions = f"torch {torch.__version__}, Python {platform.python_version()}, {platform.machine()}"
        try:
            import torch_pruning  # noqa: F401 - only to say which version was measured
            import transformers

            from importlib.metadata import version  # torch_pruning.__version__ lags its releases (1.6.1 says 1.6.0)

            versions += f", torch-pruning {version('torch-pruning')}, transformers {transformers.__version__}"
        except ImportError:
            pass
        measured = (
            f"Measured {datetime.date.today()} on the project's machine (2 shared CPU cores, no GPU; {versions}) "
            f"by `python benchmarks/graph_build_speed.py --repeats {args.repeats} --markdown docs/benchmarks.md`.\n\n"
            f"{table}\n\n" + "\n".join(scaling) + "\n"
        )
        write_between_markers(args.markdown, measured)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
