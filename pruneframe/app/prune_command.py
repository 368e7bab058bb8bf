"""``pruneframe prune``: check the arguments, build the model, load weights, prune (by a ratio or to a target), report, save.

Each stage is one function, run in this order by ``run``; every check that needs no model comes first
(``arguments.prune_argument_problem``), so a bad argument costs no import of torch. Results go to stdout,
progress bars and library chatter to stderr.
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from .arguments import DATA_FREE, prune_argument_problem


class CommandError(Exception):
    """A problem to report as ``pruneframe prune: <message>`` with exit status 2 (nothing written)."""


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except CommandError as exc:
        print(f"pruneframe prune: {exc}", file=sys.stderr)
        return 2


def say(text: str) -> None:
    """A line of the command's figures, on stdout, at once."""
    print(text, flush=True)


def _run(args: argparse.Namespace) -> int:
    args.ignore = [name for given in args.ignore for name in given.split(",") if name]
    problem = prune_argument_problem(args)
    if problem:
        raise CommandError(problem)

    from ..progress import stderr_is_terminal

    progress = args.progress if args.progress is not None else stderr_is_terminal()
    if args.save_pretrained is not None:
        from . import pretrained

        return pretrained.run(args, progress)
    criterion = _criterion(args.importance)
    built = _build(args)
    say(f"model: {args.model}")
    if args.weights is None or built.source.get("kind") == "hf":  # (a Hugging Face directory's own weights: say they are left)
        say(f"weights: {built.weights}")
    if args.weights is not None:
        say(f"weights: {_load_weights(built, args.weights)}")
    ignored = ignored_layers(built.model, args)
    from .report import layer_sizes

    snapshot = layer_sizes(built.model)
    before = _count(built)
    pruner = _pruner(built, criterion, ignored, args, progress)
    if pruner.target is not None:
        say(f"target: {pruner.target.describe()}")
    after = _steps(pruner, built, args)
    say_summary(before, after, pruner)
    after_pruning(pruner, snapshot, built.model, args)
    if args.dry_run:
        say(f"dry run: nothing was written{f' (not even --out {args.out})' if args.out else ''}")
        return 0
    _save(built, args)
    return 0


def _criterion(name: str) -> Any:
    from .. import importance as importance_module
    from ..registry import get_registry

    known = get_registry().importance_names() if name not in DATA_FREE else DATA_FREE
    if name not in known:
        raise CommandError(f"--importance {name!r} is not a known importance criterion; use one of "
                           f"{', '.join(DATA_FREE)} (the others, {', '.join(n for n in known if n not in DATA_FREE)}, need data)")
    if name not in DATA_FREE:
        raise CommandError(f"--importance {name!r} needs data (gradients or calibration batches); from the command line "
                           f"use one of {', '.join(DATA_FREE)}, or the Python API (pruneframe.pruner.MetaPruner) for the others")
    try:
        return importance_module.from_name(name)
    except (KeyError, ValueError) as exc:
        raise CommandError(str(exc)) from exc


def _build(args: argparse.Namespace) -> Any:
    from . import model_sources  # through the module, so tests can count builds

    try:
        return model_sources.build(args.model, args.input_shape, own_weights=args.weights is None)
    except model_sources.ModelSourceError as exc:
        raise CommandError(str(exc)) from exc


def _load_weights(built: Any, path: str) -> str:
    from .weights import WeightsError, load_weights

    try:
        return load_weights(built.model, path)
    except WeightsError as exc:
        raise CommandError(str(exc)) from exc


def ignored_layers(model: Any, args: argparse.Namespace) -> list[Any]:
    """The modules ``--ignore`` names; an unknown name is a CommandError."""
    names = dict(model.named_modules())
    missing = [n for n in args.ignore if n not in names]
    if missing:
        raise CommandError(f"--ignore {', '.join(missing)}: no such layer in {args.model}")
    return [names[n] for n in args.ignore]


def _count(built: Any) -> tuple[int, int]:
    import torch

    from ..utils import count_ops_and_params

    try:
        with torch.no_grad():
            macs, params = count_ops_and_params(built.model, built.inputs, forward_fn=built.forward_fn)[:2]
    except ValueError as exc:  # the model cannot run on the inputs given (--input-shape)
        raise CommandError(str(exc)) from exc
    return macs, params


def _pruner(built: Any, criterion: Any, ignored: list[Any], args: argparse.Namespace, progress: bool) -> Any:
    from ..pruner import MetaPruner

    how_much: dict[str, Any] = {"target_macs": args.target_macs, "target_params": args.target_params}
    if args.ratio is not None:
        how_much = {"pruning_ratio": args.ratio}
    try:
        return MetaPruner(built.model, built.inputs, criterion, global_pruning=args.global_pruning,
                          iterative_steps=args.steps, round_to=args.round_to, ignored_layers=ignored,
                          forward_fn=built.forward_fn, progress=progress, remove_layers=args.remove_layers,
                          keep_loadable=args.keep_loadable, **how_much)
    except ValueError as exc:  # includes pruner.targets.TargetError: a target above the model's counts
        raise CommandError(with_flags(str(exc))) from exc


def with_flags(message: str) -> str:
    """A pruner message in the command line's words (its argument names are the Python ones)."""
    for python, flag in (("target_macs=", "--target-macs "), ("target_params=", "--target-params "),
                         ("remove_layers: ", "--remove-layers: "), ("remove_layers=", "--remove-layers "),
                         ("max_pruning_ratio", "the ratio cap"), ("(pruning_ratio=..., or --ratio on the command line)", "(--ratio)")):
        message = message.replace(python, flag)
    return message


def _steps(pruner: Any, built: Any, args: argparse.Namespace) -> tuple[int, int]:
    counts = (0, 0)
    for k in range(args.steps):
        counts = step_and_say(pruner, k, args.steps, lambda: _count(built))
    return counts


def step_and_say(pruner: Any, k: int, steps: int, count: Any) -> tuple[int, int]:
    """Step ``k`` of ``steps``: prune, count (``count()`` -> MACs, parameters), print the line; a refused step exits."""
    from ..errors import ModelStopsRunningError
    from ..pruner.targets import TargetError

    started = time.perf_counter()
    try:
        pruner.step()
    except (TargetError, ModelStopsRunningError) as exc:  # the latter: it cannot run without the removed blocks (undone)
        raise CommandError(with_flags(str(exc)) + "; nothing was written") from exc
    counts = count()
    say(f"step {k + 1}/{steps}: MACs {counts[0] / 1e9:.4f} G, parameters {counts[1] / 1e6:.4f} M "
        f"({time.perf_counter() - started:.1f} s)")
    if pruner.target_result is not None:
        say(f"  {pruner.target_result}")
    say_removed(pruner, k)
    return counts


def say_removed(pruner: Any, step: int) -> None:
    """After the first step: the blocks ``--remove-layers`` removed, by their names before the removal."""
    if step == 0 and pruner.removed_layers:
        say(f"  removed {len(pruner.removed_layers)} layer(s): {', '.join(pruner.removed_layers)} (the kept blocks are "
            "renumbered: the report and the saved model use their new names)")


def say_summary(before: tuple[int, int], after: tuple[int, int], pruner: Any) -> None:
    """MACs and parameters before -> after, and whether a target was met."""
    (macs0, params0), (macs1, params1) = before, after
    say(f"MACs:       {macs0 / 1e9:.4f} G -> {macs1 / 1e9:.4f} G ({macs1 / max(macs0, 1):.1%} of the original)")
    say(f"Parameters: {params0 / 1e6:.4f} M -> {params1 / 1e6:.4f} M ({params1 / max(params0, 1):.1%} of the original)")
    result = pruner.target_result
    if result is not None:
        verdict = "met" if result.met else "MISSED (groups were left whole: see the warnings)"
        say(f"target {verdict}: {result.target.describe()}")


def after_pruning(pruner: Any, snapshot: Any, model: Any, args: argparse.Namespace) -> None:
    """The per-layer report (sizes before -> after, and the layer sides left whole with why), before anything is saved."""
    from .report import print_prune_report

    say("" if not args.dry_run else "\ndry run: the prune below was made in memory only")
    print_prune_report(snapshot, model, pruner, all_layers=args.all_layers)
    sys.stdout.flush()


def _save(built: Any, args: argparse.Namespace) -> None:
    from .model_sources import save_pruned

    save_pruned(built.model, args.out, args.model, args.input_shape, source=built.source)
    say(f"saved to {args.out}; load it with pruneframe.load_pruned({args.out!r}) from any directory")


__all__ = ["CommandError", "after_pruning", "ignored_layers", "run", "say", "say_removed", "say_summary", "step_and_say",
           "with_flags"]
