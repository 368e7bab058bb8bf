"""``pruneframe prune hf:DIR --save-pretrained OUT``: prune a Hugging Face checkpoint into a directory ``from_pretrained`` loads.

The checkpoint is opened and checked whole first (shards, index, shapes
against its config). When its safetensors fit in ``--max-memory`` (default:
half the memory available now) the model is loaded and pruned in memory;
otherwise it is planned on the meta device with importance read from the
shards one layer at a time (``--importance activation``: calibration forwards
onload each layer from the shards while it runs) and the prune is streamed
shard by shard (``pruneframe.checkpoint``). Either way the output directory appears only
once it is complete. ``--calibration FILE`` (one sample a line, or JSON lines
with a "text" field) feeds a data-driven importance, tokenised with the
checkpoint's own tokenizer; nothing is downloaded.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path
from typing import Any, Callable

import attrs

from .prune_command import CommandError, after_pruning, ignored_layers, say, say_summary, step_and_say, with_flags

CALIBRATED = ("activation", "taylor", "hessian")


def human(nbytes: int) -> str:
    """A byte count for people: 512 B, 40.0 KB, 1.50 GB."""
    for unit, size in (("TB", 2**40), ("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if nbytes >= size:
            return f"{nbytes / size:.{2 if unit in ('TB', 'GB') else 1}f} {unit}"
    return f"{nbytes} B"


def available_memory() -> int | None:
    """Bytes of memory available now (``MemAvailable``), or None where the system does not say."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def run(args: argparse.Namespace, progress: bool) -> int:
    from ..checkpoint import Checkpoint, CheckpointError, check_output_directory

    directory = Path(args.model[len("hf:"):])
    try:
        checkpoint = Checkpoint(directory)
        if not args.dry_run:
            check_output_directory(args.save_pretrained, directory)
    except CheckpointError as exc:
        raise CommandError(str(exc)) from exc
    limit = args.max_memory or (available_memory() or 0) // 2
    streaming = checkpoint.total_bytes > limit
    say(f"model: {args.model} ({human(checkpoint.total_bytes)} of safetensors in {len(checkpoint.shards)} file(s), "
        f"the largest {human(checkpoint.largest_shard_bytes)})")
    say(f"mode: {'streaming: planned on the meta device, weights read one layer at a time' if streaming else 'in memory'} "
        f"(--max-memory {human(limit)})")
    if streaming and args.importance in ("taylor", "hessian"):
        raise CommandError(f"--importance {args.importance} needs gradients, which a model planned without its weights does "
                           f"not have, and this checkpoint ({human(checkpoint.total_bytes)}) is larger than --max-memory; use "
                           "--importance activation (calibrated one layer at a time) or a weight criterion (l1, l2, lamp, "
                           "fpgm), or raise --max-memory. Nothing was written.")
    target = _streamed(directory, args) if streaming else _in_memory(directory, args)
    return _prune(target, args, progress)


@attrs.define
class _Target:
    """What the prune works on: the model, its inputs and call, the criterion, calibration batches, how to save."""

    model: Any
    inputs: Any
    forward: Any
    criterion: Any
    batches: list[Any]
    save: Callable[[bool], None]
    calibrating: Callable[[], Any] = contextlib.nullcontext  # what the calibration forwards run inside


def _weight_criterion(name: str) -> Any:
    from ..importance import from_name

    try:
        return from_name(name)
    except (KeyError, ValueError) as exc:
        raise CommandError(str(exc)) from exc


def _streamed(directory: Path, args: argparse.Namespace) -> tuple[Any, ...]:
    from ..checkpoint import CheckpointError, open_for_planning

    try:
        session = open_for_planning(directory, sequence_length=32)  # the length the in-memory path counts MACs for
        criterion = _weight_criterion(args.importance)
        if args.importance not in CALIBRATED:
            criterion = session.importance(criterion)
    except (CheckpointError, TypeError) as exc:
        raise CommandError(str(exc)) from exc
    batches = _calibration_batches(directory, args, session.model.config)

    def save(progress: bool) -> None:
        from ..progress import bar

        total = sum(info.nbytes for info in session.checkpoint.tensors.values())
        with bar("writing shards (MB)", total=total // 2**20 + 1, enabled=progress, unit="MB") as shown:
            session.save(args.save_pretrained, progress=lambda nbytes, shard: shown.update(nbytes / 2**20))

    return _Target(session.model, session.example_inputs, session.forward, criterion, batches, save, session.loader.onloading)


def _in_memory(directory: Path, args: argparse.Namespace) -> tuple[Any, ...]:
    import torch

    from ..checkpoint.planning import build_on_meta
    from ..checkpoint.stream import copy_side_files
    from ..files import staged_directory

    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(directory), local_files_only=True)
    cls = type(build_on_meta(config))
    model = cls.from_pretrained(str(directory), local_files_only=True).eval()
    batches = _calibration_batches(directory, args, config)
    inputs = {"input_ids": torch.randint(0, min(int(config.vocab_size), 1000), (1, 32),
                                     generator=torch.Generator().manual_seed(0))}
    criterion = _weight_criterion(args.importance)

    def save(progress: bool) -> None:
        from ..checkpoint import check_output_directory

        out = check_output_directory(args.save_pretrained, directory)
        with staged_directory(out) as staging:
            model.save_pretrained(staging)
            copy_side_files(directory, staging)

    return _Target(model, inputs, _forward, criterion, batches, save)


def _forward(model: Any, inputs: dict[str, Any]) -> Any:
    out = model(**inputs)
    return out[0] if isinstance(out, tuple) or hasattr(out, "to_tuple") else out


def _calibration_batches(directory: Path, args: argparse.Namespace, config: Any) -> list[dict[str, Any]]:
    """``--calibration`` samples tokenised with the checkpoint's tokenizer, one batch each (empty without the option)."""
    if args.calibration is None:
        return []
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise CommandError(f"--calibration needs the checkpoint's tokenizer, and {directory} has none that loads "
                           f"({type(exc).__name__}: {exc}); save it there with tokenizer.save_pretrained") from exc
    texts = read_samples(args.calibration)[:args.calibration_samples]
    batches = [dict(tokenizer(t, return_tensors="pt", truncation=True, max_length=args.calibration_length)) for t in texts]
    batches = [{k: v for k, v in b.items() if k in ("input_ids", "attention_mask")} for b in batches
               if b["input_ids"].numel() > 0]
    if not batches:
        raise CommandError(f"--calibration {args.calibration}: no sample gave any token")
    return batches


def read_samples(path: str) -> list[str]:
    """The samples of a calibration file: one per non-empty line, or the "text" of each JSON-lines object."""
    samples = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            if line.startswith("{"):
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise CommandError(f"--calibration {path}, line {number}: it starts like JSON but is not ({exc})") from None
                if not isinstance(record.get("text"), str):
                    raise CommandError(f"--calibration {path}, line {number}: a JSON line needs a \"text\" string")
                line = record["text"]
            samples.append(line)
    if not samples:
        raise CommandError(f"--calibration {path}: the file has no samples (one a line, or JSON lines with \"text\")")
    return samples


def _prune(target: _Target, args: argparse.Namespace, progress: bool) -> int:
    from ..pruner import MetaPruner
    from ..utils import count_ops_and_params
    from .report import layer_sizes

    model, inputs, forward, batches = target.model, target.inputs, target.forward, target.batches
    ignored = ignored_layers(model, args)
    snapshot = layer_sizes(model)
    before = count_ops_and_params(model, inputs, forward_fn=forward)[:2]
    say(f"(MACs are counted for one sequence of {inputs['input_ids'].shape[-1]} tokens)")
    try:
        pruner = MetaPruner(model, inputs, target.criterion, pruning_ratio=args.ratio, global_pruning=args.global_pruning,
                            iterative_steps=args.steps, round_to=args.round_to, ignored_layers=ignored,
                            forward_fn=forward, progress=progress, remove_layers=args.remove_layers)
    except (TypeError, ValueError) as exc:  # --remove-layers names that are no removable block of this model
        raise CommandError(f"{with_flags(str(exc))}; nothing was written") from exc
    after = before
    for k in range(args.steps):
        if batches and (args.importance in CALIBRATED or k == 0):  # a weight criterion reads them once: to rank the layers
            loss = _lm_loss if args.importance in ("taylor", "hessian") else None
            with target.calibrating():
                pruner.calibrate(batches, forward_fn=forward, loss_fn=loss, progress=progress)
        after = step_and_say(pruner, k, args.steps, lambda: count_ops_and_params(model, inputs, forward_fn=forward)[:2])
    say_summary(before, after, pruner)
    after_pruning(pruner, snapshot, model, args)
    if args.dry_run:
        say(f"dry run: nothing was written (not even --save-pretrained {args.save_pretrained})")
        return 0
    started = time.perf_counter()
    target.save(progress)
    say(f"saved to {args.save_pretrained} ({time.perf_counter() - started:.1f} s); load it with "
        f"transformers' from_pretrained({args.save_pretrained!r})")
    return 0


def _lm_loss(model: Any, batch: dict[str, Any]) -> Any:
    return model(**batch, labels=batch["input_ids"]).loss
