"""The ``pruneframe`` command line."""
from __future__ import annotations

import argparse
import json
import sys

from .plugin_manager import get_registry


def _plugins(args: argparse.Namespace) -> int:
    json.dump(get_registry().describe(), sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pruneframe", description="Structural pruning for PyTorch.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("plugins", help="list installed plugins as JSON: name, distribution, version, hooks, what they serve")
    p.set_defaults(run=_plugins)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    raise SystemExit(main())
