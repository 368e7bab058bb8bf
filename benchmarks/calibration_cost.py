"""What calibration costs: N batches through ``MetaPruner.calibrate`` (ActivationImportance) against N plain forwards.

    python benchmarks/calibration_cost.py --batches 20 --repeats 5

Each measurement runs in a fresh interpreter, plain and calibrated alternating, and the medians are compared.
Both kinds of process build the same model and pruner and run one warm-up forward before the clock starts,
so only the N batches are timed: a plain process runs them in eval mode under ``no_grad``, a calibrated one
through ``pruner.calibrate`` (hooks on every prunable layer). Goal: calibrated / plain at most 1.2.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from typing import Any


def _workload(name: str, n_batches: int) -> tuple[Any, Any, list[Any], list[Any]]:
    """The model, its example inputs, N batches, and the layers to leave out of pruning."""
    import torch

    torch.manual_seed(0)
    if name == "resnet18":
        import torchvision

        model = torchvision.models.resnet18(weights=None)
        batches = [torch.randn(8, 3, 112, 112) for _ in range(n_batches)]
        return model, batches[0][:1], batches, [model.fc]
    if name == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        config = LlamaConfig(vocab_size=1000, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                             num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=256)
        model = LlamaForCausalLM(config)
        batches = [torch.randint(0, 1000, (4, 128)) for _ in range(n_batches)]
        return model, batches[0][:1], batches, [model.lm_head]
    raise SystemExit(f"unknown workload {name!r}: use resnet18 or llama")


def child(name: str, mode: str, n_batches: int) -> None:
    """Build, warm up, then print the seconds N batches take in ``mode`` (plain or calibrated)."""
    import torch

    import pruneframe as tp

    model, example, batches, ignored = _workload(name, n_batches)
    model.eval()
    pruner = tp.pruner.MetaPruner(model, example, tp.importance.ActivationImportance(), ignored_layers=ignored)
    with torch.no_grad():
        model(batches[0])
    started = time.perf_counter()
    if mode == "plain":
        with torch.no_grad():
            for batch in batches:
                model(batch)
    else:
        pruner.calibrate(batches)
    print(time.perf_counter() - started)


def measure(name: str, mode: str, n_batches: int, threads: int) -> float:
    command = [sys.executable, __file__, "--child", mode, "--workload", name, "--batches", str(n_batches)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=20, help="batches per measurement (N)")
    parser.add_argument("--repeats", type=int, default=5, help="fresh processes per mode (the median is shown)")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the measured processes")
    parser.add_argument("--workload", action="append", choices=["resnet18", "llama"], help="default: both")
    parser.add_argument("--child", choices=["plain", "calibrated"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    workloads = args.workload or ["resnet18", "llama"]
    if args.child:
        child(workloads[0], args.child, args.batches)
        return
    print(f"| workload | {args.batches} plain forwards, median of {args.repeats} (s) | calibrated (s) | calibrated / plain |")
    print("| --- | --- | --- | --- |")
    for name in workloads:
        times: dict[str, list[float]] = {"plain": [], "calibrated": []}
        for _ in range(args.repeats):
            for mode in ("plain", "calibrated"):  # alternating, so a busy spell on the machine hits both
                times[mode].append(measure(name, mode, args.batches, args.threads))
        plain, calibrated = statistics.median(times["plain"]), statistics.median(times["calibrated"])
        print(f"| {name} | {plain:.3f} | {calibrated:.3f} | {calibrated / plain:.3f} |", flush=True)


if __name__ == "__main__":
    main()
