"""The long fuzz run: random architectures (tests/architectures.py), random prunes, counted.

    python benchmarks/fuzz.py --examples 1000

Each example is a random network (convs, grouped and depthwise convs, batch
norm, residuals, concat, split, shuffles, pooling, in-place ops, a conv module
called on two branches, tied conv weights, a linear head) and a random prune
of a random ratio, checked in float64 against the original with the lost
connections zeroed. Outcomes: "pass" (relative error below 1e-9, the model
handed in unchanged), "wrong" (a larger error: a wrong prune), "error" (an
exception; "error, model changed" if the model handed in was changed too).
The seed is fixed: the same command draws the same networks. It prints the
counts and, for every example that did not pass, its program.
"""
from __future__ import annotations

import argparse
import collections
import datetime
import platform
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import torch  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402

from architectures import X, GeneratedNet, NetSpec, net_specs, ratios, seeds  # noqa: E402
from pruneframe import UnsupportedOpWarning  # noqa: E402
from pruneframe.testing import check_prune_equivalence, prune_random  # noqa: E402

TOL = 1e-9


def state(model: torch.nn.Module) -> list[tuple[str, torch.Size, torch.Tensor]]:
    return [(n, t.shape, t.detach().clone()) for n, t in [*model.named_parameters(), *model.named_buffers()]]


def unchanged(model: torch.nn.Module, before: list[tuple[str, torch.Size, torch.Tensor]]) -> bool:
    now = [*model.named_parameters(), *model.named_buffers()]
    return len(now) == len(before) and all(n == m and t.shape == s and torch.equal(t.detach(), v)
                                           for (n, t), (m, s, v) in zip(now, before))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=1000)
    parser.add_argument("--max-steps", type=int, default=9, help="blocks per network (the tests use 7)")
    args = parser.parse_args(argv)

    counts: collections.Counter[str] = collections.Counter()
    shapes: collections.Counter[str] = collections.Counter()  # how many networks hold each of the harder shapes
    failures: list[str] = []
    pruned_something = 0

    @settings(max_examples=args.examples, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(spec=net_specs(max_steps=args.max_steps), ratio=ratios, seed=seeds)
    def one(spec: NetSpec, ratio: float, seed: int) -> None:
        nonlocal pruned_something
        layer_calls = collections.Counter(step.arg for step in spec.steps if step.op == "layer")
        shapes["tied weights"] += any(layer.tied_to for _, layer in spec.layers)
        shapes["a module called twice"] += any(n > 1 for n in layer_calls.values())
        shapes["an in-place op"] += any(step.arg == "relu_" for step in spec.steps)
        shapes["a map used twice"] += len({s for step in spec.steps for s in step.srcs}) < sum(len(step.srcs) for step in spec.steps)
        torch.manual_seed(seed)
        model = GeneratedNet(spec)
        before = state(model)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UnsupportedOpWarning)
                error, pruned, _ = check_prune_equivalence(model, X, prune_random(ratio=ratio, seed=seed))
        except Exception as exc:  # counted and shown: the run is a census, not a test that stops at the first
            outcome = "error" if unchanged(model, before) else "error, model changed"
            failures.append(f"{outcome}: {type(exc).__name__}: {exc}\n{spec!r}")
        else:
            outcome = "pass" if error < TOL and unchanged(model, before) else "wrong"
            if outcome == "wrong":
                failures.append(f"wrong (relative error {error:.3g}):\n{spec!r}")
            pruned_something += sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
        counts[outcome] += 1

    start = time.perf_counter()
    one()
    seconds = time.perf_counter() - start
    total = sum(counts.values())
    for failure in failures:
        print(failure, end="\n\n")
    print(f"{datetime.date.today()}, torch {torch.__version__}, Python {platform.python_version()}: {total} random "
          f"architectures in {seconds:.0f} s; {pruned_something} pruned something; "
          + ", ".join(f"{n} with {shape}" for shape, n in shapes.items()))
    print(", ".join(f"{counts[k]} {k}" for k in ("pass", "wrong", "error", "error, model changed")))
    return 0 if counts["pass"] == total else 1


if __name__ == "__main__":
    raise SystemExit(main())
