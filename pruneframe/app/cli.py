"""The ``pruneframe`` command line."""
from __future__ import annotations

import argparse
import json
import os
import sys

DATA_FREE = ("l1", "l2", "magnitude", "group_magnitude", "group_norm", "bn_scale", "lamp", "fpgm", "random")


def _plugins(args: argparse.Namespace) -> int:
    from ..registry import build_registry

    json.dump(build_registry().describe(failures=True), sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"input shape {text!r}: write sizes separated by commas, e.g. 1,3,224,224") from None
    if not shape or any(v < 1 for v in shape):
        raise argparse.ArgumentTypeError(f"input shape {text!r}: every size must be a positive int")
    return shape


def _argument_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the arguments, found before any model is built (None if nothing)."""
    if not 0.0 <= args.ratio < 1.0:
        return f"--ratio {args.ratio}: pruning_ratio={args.ratio} must be a number in [0, 1), e.g. 0.5 removes half"
    if args.steps < 1:
        return f"--steps {args.steps}: give a positive number of steps"
    if args.round_to is not None and args.round_to < 1:
        return f"--round-to {args.round_to}: give a positive multiple, or leave it out"
    out = os.path.abspath(args.out)
    if os.path.isdir(out):
        return f"--out {args.out}: that is a directory; name the file to write, e.g. {os.path.join(args.out, 'pruned.pth')}"
    folder = os.path.dirname(out)
    if not os.path.isdir(folder):
        return f"--out {args.out}: the directory {folder} does not exist; create it first (mkdir -p {folder})"
    if not os.access(folder, os.W_OK):
        return f"--out {args.out}: the directory {folder} is not writable"
    return None


def _prune(args: argparse.Namespace) -> int:
    import torch

    from .. import importance as importance_module
    from ..registry import get_registry
    from ..pruner import MetaPruner
    from ..utils import count_ops_and_params
    from .model_sources import ModelSourceError, build, save_pruned

    args.ignore = [name for given in args.ignore for name in given.split(",") if name]
    problem = _argument_problem(args)
    if problem:
        print(f"pruneframe prune: {problem}", file=sys.stderr)
        return 2
    known = get_registry().importance_names() if args.importance not in DATA_FREE else DATA_FREE
    if args.importance not in known:
        print(f"pruneframe prune: --importance {args.importance!r} is not a known importance criterion; use one of "
              f"{', '.join(DATA_FREE)} (the others, {', '.join(n for n in known if n not in DATA_FREE)}, need data)",
              file=sys.stderr)
        return 2
    if args.importance not in DATA_FREE:
        print(f"pruneframe prune: --importance {args.importance!r} needs gradients from data; from the command line "
              f"use one of {', '.join(DATA_FREE)}, or the Python API (pruneframe.pruner.MetaPruner) for the others",
              file=sys.stderr)
        return 2
    try:
        model, inputs, forward_fn = build(args.model, args.input_shape)
        criterion = importance_module.from_name(args.importance)
    except (ModelSourceError, KeyError, ValueError) as exc:
        print(f"pruneframe prune: {exc}", file=sys.stderr)
        return 2
    names = dict(model.named_modules())
    missing = [n for n in args.ignore if n not in names]
    if missing:
        print(f"pruneframe prune: --ignore {', '.join(missing)}: no such layer in {args.model}", file=sys.stderr)
        return 2
    try:
        with torch.no_grad():
            macs0, params0 = count_ops_and_params(model, inputs, forward_fn=forward_fn)[:2]
    except ValueError as exc:  # the model cannot run on the inputs given (--input-shape)
        print(f"pruneframe prune: {exc}", file=sys.stderr)
        return 2
    try:
        pruner = MetaPruner(model, inputs, criterion, global_pruning=args.global_pruning, pruning_ratio=args.ratio,
                            iterative_steps=args.steps, round_to=args.round_to,
                            ignored_layers=[names[n] for n in args.ignore], forward_fn=forward_fn)
    except ValueError as exc:
        print(f"pruneframe prune: {exc}", file=sys.stderr)
        return 2
    for k in range(args.steps):
        pruner.step()
        with torch.no_grad():
            macs, params = count_ops_and_params(model, inputs, forward_fn=forward_fn)[:2]
        print(f"step {k + 1}/{args.steps}: MACs {macs / 1e9:.4f} G, parameters {params / 1e6:.4f} M", flush=True)
    macs1, params1 = macs, params
    print(f"MACs:       {macs0 / 1e9:.4f} G -> {macs1 / 1e9:.4f} G ({macs1 / macs0:.1%} of the original)")
    print(f"Parameters: {params0 / 1e6:.4f} M -> {params1 / 1e6:.4f} M ({params1 / params0:.1%} of the original)")
    save_pruned(model, args.out, args.model, args.input_shape)
    print(f"saved to {args.out}; load it with pruneframe.load_pruned({args.out!r})")
    return 0


def main(argv: list[str] | None = None) -> int:
    from .. import __version__

    parser = argparse.ArgumentParser(prog="pruneframe", description="Structural pruning for PyTorch.")
    parser.add_argument("--version", action="version", version=f"pruneframe {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("plugins", help="list installed plugins as JSON: name, distribution, version, hooks, what they serve")
    p.set_defaults(run=_plugins)
    p = sub.add_parser("prune", help="prune a model by a ratio, print MACs and parameters before/after, save it",
                       description="Prune MODEL (torchvision:NAME, timm:NAME, hf:CONFIG-or-path, FILE.py:factory), "
                                   "print MACs and parameters before and after, and save weights plus pruning plan.")
    p.add_argument("model")
    p.add_argument("--ratio", type=float, default=0.5, help="fraction of each group's channels to remove (default 0.5)")
    p.add_argument("--importance", default="l2", help=f"criterion by name (default l2): {', '.join(DATA_FREE)}")
    p.add_argument("--global", dest="global_pruning", action="store_true", help="rank all groups together")
    p.add_argument("--steps", type=int, default=1, help="reach the ratio in this many steps")
    p.add_argument("--round-to", type=int, default=None, help="keep channel counts multiples of this")
    p.add_argument("--ignore", action="append", default=[], metavar="NAME[,NAME...]",
                   help="layers (by name) never to prune; repeat it or separate names with commas")
    p.add_argument("--input-shape", type=_shape, default=None, help="example input shape, e.g. 1,3,224,224")
    p.add_argument("--out", required=True, help="file to save the pruned model to")
    p.set_defaults(run=_prune)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    raise SystemExit(main())
