"""How long the command line takes to answer: medians of fresh processes.

    python benchmarks/cli_startup.py --repeats 7

Each command runs in a new interpreter, so every import is paid for as a user pays it. ``import torch`` is
measured too: it is the floor under anything that needs torch (``pruneframe plugins``: the built-in plugins
are torch modules). Goals: ``--help`` under 1 s, ``plugins`` under 2 s, a bad ``--out`` refused under 3 s.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time

MISSING = f"{tempfile.gettempdir()}/pruneframe-no-such-dir/x.pth"

COMMANDS = {
    "pruneframe --help": [sys.executable, "-m", "pruneframe", "--help"],
    "python -c 'import torch' (the floor)": [sys.executable, "-c", "import torch"],
    "pruneframe plugins": [sys.executable, "-m", "pruneframe", "plugins"],
    "pruneframe plugins --load": [sys.executable, "-m", "pruneframe", "plugins", "--load"],
    "pruneframe prune ... --out MISSING/x.pth (refused)": [sys.executable, "-m", "pruneframe", "prune", "torchvision:resnet50",
                                                           "--out", MISSING],
}


def seconds(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="fresh processes per command (the median is shown)")
    args = parser.parse_args()
    for command in COMMANDS.values():  # warm the file-system cache once, so the first command is not penalised
        seconds(command)
    print(f"| command | median of {args.repeats} (s) | min (s) |")
    print("| --- | --- | --- |")
    for name, command in COMMANDS.items():
        times = [seconds(command) for _ in range(args.repeats)]
        print(f"| `{name}` | {statistics.median(times):.2f} | {min(times):.2f} |", flush=True)


if __name__ == "__main__":
    main()
