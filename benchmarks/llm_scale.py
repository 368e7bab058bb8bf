"""Models bigger than memory: meta-device plans at 7B and 70B shapes, and a streamed prune of a multi-GB checkpoint.

Usage:
    python benchmarks/llm_scale.py [--repeats 3] [--workdir DIR] [--skip-70b] [--markdown docs/llm-scale.md]

Every measurement runs in a fresh Python process (peak RSS is that process's
``ru_maxrss``); repeats alternate between the cases and the median is shown.

- plan 7B / plan 70B: a LLaMA-7B-shaped (32 layers, hidden 4096, MLP 11008,
  32 heads) and a LLaMA-70B-shaped (80 layers, hidden 8192, MLP 28672, 64
  query / 8 key-value heads) model built on the meta device; the
  DependencyGraph plus one MetaPruner step at 20% (embeddings and head
  ignored). No checkpoint of that size fits on this machine's disk budget, so
  the scores are random: this is the cost of the planning itself.
- stream: a LLaMA-shaped checkpoint of about 2.2 GB (hidden 2048, MLP 5632, 22
  layers, 32 / 4 heads, bfloat16, 512 MB shards) written once; then planned on
  the meta device with L2 magnitude read from the shards (CheckpointImportance)
  and streamed into a new directory (save_pruned), against loading it with
  from_pretrained, pruning it in memory and save_pretrained.
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
import tempfile
from pathlib import Path

from model_families import plugin_site  # the same offline install of the contrib plugins

SHAPES = {
    "7b": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=32),
    "70b": dict(vocab_size=32000, hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
                num_key_value_heads=8),
    "1b": dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
               num_key_value_heads=4),
}

PLAN = r"""
import json, resource, sys, time, torch, warnings
warnings.simplefilter("ignore")
import pruneframe as tp
from transformers import LlamaConfig, LlamaForCausalLM
started = time.perf_counter()
with torch.device("meta"):
    model = LlamaForCausalLM(LlamaConfig(**json.loads(sys.argv[1])))
inputs = {"input_ids": torch.zeros(1, 8, dtype=torch.long, device="meta")}
pruner = tp.pruner.MetaPruner(model, inputs, importance=tp.importance.RandomImportance(), pruning_ratio=0.2,
                              ignored_layers=[model.lm_head, model.model.embed_tokens], forward_fn=lambda m, x: m(**x).logits)
graph = time.perf_counter() - started
pruner.step()
print(json.dumps({"graph_s": graph, "total_s": time.perf_counter() - started,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "mlp": list(model.model.layers[0].mlp.up_proj.weight.shape)}))
"""

WRITE = r"""
import json, sys, torch
from pathlib import Path
from transformers import LlamaConfig, LlamaForCausalLM
from pruneframe.checkpoint.reader import TensorInfo
from pruneframe.checkpoint.writer import ShardWriter
config = LlamaConfig(**json.loads(sys.argv[1]), torch_dtype="bfloat16", tie_word_embeddings=False,
                     architectures=["LlamaForCausalLM"])
out = Path(sys.argv[2]); out.mkdir()
with torch.device("meta"):
    model = LlamaForCausalLM(config)
shards, current, size, limit = [], {}, 0, 512 * 2**20
for name, t in model.state_dict().items():
    info = TensorInfo("", "BF16", tuple(t.shape))
    if current and size + info.nbytes > limit:
        shards.append(current); current, size = {}, 0
    current[name] = info; size += info.nbytes
shards.append(current)
weight_map = {}
generator = torch.Generator().manual_seed(0)
for k, tensors in enumerate(shards):
    name = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
    writer = ShardWriter(out / name, tensors)
    for tensor_name, info in tensors.items():
        writer.write(tensor_name, (torch.randn(info.shape, generator=generator) * 0.02).to(torch.bfloat16))
        weight_map[tensor_name] = name
    writer.close()
(out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
config.save_pretrained(out)
print(json.dumps({"written": len(shards)}))
"""

STREAM = r"""
import json, resource, sys, time, torch, warnings
warnings.simplefilter("ignore")
import pruneframe as tp
from pruneframe.checkpoint import open_for_planning
started = time.perf_counter()
session = open_for_planning(sys.argv[1])
model = session.model
pruner = tp.pruner.MetaPruner(model, session.example_inputs, importance=session.importance(tp.importance.MagnitudeImportance(p=2)),
                              pruning_ratio=0.2, ignored_layers=[model.lm_head, model.model.embed_tokens], forward_fn=session.forward)
pruner.step()
planned = time.perf_counter() - started
session.save(sys.argv[2])
print(json.dumps({"plan_s": planned, "total_s": time.perf_counter() - started,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

IN_MEMORY = r"""
import json, resource, sys, time, torch, warnings
warnings.simplefilter("ignore")
import pruneframe as tp
from transformers import AutoModelForCausalLM
started = time.perf_counter()
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.bfloat16).eval()
inputs = {"input_ids": torch.zeros(1, 8, dtype=torch.long)}
pruner = tp.pruner.MetaPruner(model, inputs, importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=0.2,
                              ignored_layers=[model.lm_head, model.model.embed_tokens], forward_fn=lambda m, x: m(**x).logits)
pruner.step()
planned = time.perf_counter() - started
model.save_pretrained(sys.argv[2], max_shard_size="512MB")
print(json.dumps({"plan_s": planned, "total_s": time.perf_counter() - started,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


ENV = dict(os.environ)


def with_transformers_plugin() -> None:
    """The contrib plugins, pip-installed offline (unless importable) for the measured processes, as model_families does."""
    site = plugin_site(Path(tempfile.mkdtemp(prefix="llm_scale-plugins-")))
    if site is not None:
        ENV["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), ENV.get("PYTHONPATH", "")) if p)


def run(code: str, *args: str) -> dict:
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=3600, env=ENV)
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-3000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def median(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", default=None, help="where the test checkpoint is written (default: a temporary folder)")
    parser.add_argument("--skip-70b", action="store_true")
    parser.add_argument("--markdown", default=None)
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="llm_scale-"))
    with_transformers_plugin()
    source = work / "source"
    if not source.exists():
        run(WRITE, json.dumps(SHAPES["1b"]), str(source))
    shards = sorted(source.glob("*.safetensors"))
    largest, total = max(p.stat().st_size for p in shards) / 2**20, sum(p.stat().st_size for p in shards) / 2**20
    results: dict[str, list[dict]] = {"plan 7b": [], "plan 70b": [], "stream": [], "in memory": []}
    for k in range(args.repeats):
        results["plan 7b"].append(run(PLAN, json.dumps(SHAPES["7b"])))
        if not args.skip_70b:
            results["plan 70b"].append(run(PLAN, json.dumps(SHAPES["70b"])))
        for case, code in (("stream", STREAM), ("in memory", IN_MEMORY)):
            out = work / f"out-{case.replace(' ', '-')}-{k}"
            results[case].append(run(code, str(source), str(out)))
            subprocess.run(["rm", "-rf", str(out)], check=True)
        print(f"round {k + 1}/{args.repeats} done", file=sys.stderr)
    lines = [
        f"# Models bigger than memory: measured {datetime.date.today()}",
        "",
        f"`python benchmarks/llm_scale.py --repeats {args.repeats}` on {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, torch {__import__('torch').__version__}, transformers "
        f"{__import__('transformers').__version__}; medians of {args.repeats} fresh processes, cases alternating.",
        "",
        "| case | what | seconds | peak RSS (MiB) |",
        "|---|---|---:|---:|",
    ]
    for case in ("plan 7b", "plan 70b"):
        if results[case]:
            lines.append(f"| {case} | graph {median(results[case], 'graph_s'):.1f} s + one 20% step (meta device, random scores) "
                         f"| {median(results[case], 'total_s'):.1f} | {median(results[case], 'peak_mb'):.0f} |")
    for case in ("stream", "in memory"):
        lines.append(f"| {case} | 1.1B LLaMA shape, bf16, {len(shards)} shards ({total:.0f} MiB, largest {largest:.0f} MiB): "
                     f"plan {median(results[case], 'plan_s'):.1f} s, then write | {median(results[case], 'total_s'):.1f} | "
                     f"{median(results[case], 'peak_mb'):.0f} |")
    stream, memory = median(results["stream"], "peak_mb"), median(results["in memory"], "peak_mb")
    lines += ["", f"Streaming peak RSS: {stream / largest:.2f}x the largest shard, {stream / total:.2f}x the checkpoint; "
                  f"in memory: {memory / total:.2f}x the checkpoint. Streaming / in-memory time: "
                  f"{median(results['stream'], 'total_s') / median(results['in memory'], 'total_s'):.2f}x."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text)


if __name__ == "__main__":
    main()
