"""``save_pruned``: write a planned model's weights by streaming its checkpoint, one layer at a time.

Each output shard holds the tensors of the source shard of the same name, in
the same order, at their pruned shapes; a tensor of a layer the plan touched
is the layer onloaded and pruned (``LayerLoader``), any other is copied as it
is. Memory stays at one layer's tensors plus a fixed overhead, whatever the
size of the model or its shards. The output directory gets the index, the
config the plugins synced (``config.save_pretrained`` when the model has one),
the plan as ``pruning_plan.json``, and the source's other files (tokenizer,
generation config); it appears only once everything is written.
"""
from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..errors import PruningError
from ..plan import get_plan, plan_to_json
from .onload import LayerLoader
from .reader import DTYPES, INDEX, TensorInfo
from ..files import staged_directory
from .writer import ShardWriter, check_output_directory

_NOT_COPIED = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack")
_WRITTEN = ("config.json", INDEX, "pruning_plan.json")


def save_pruned(model: nn.Module, loader: LayerLoader, out: str | os.PathLike[str],
                progress: Callable[[int, str], None] | None = None) -> Path:
    """Write ``model`` (pruned on the meta device by a plan; ``loader`` reads its checkpoint) to the new directory ``out``.

    ``progress(bytes, shard)`` is called after each tensor. Returns the output path.
    """
    checkpoint = loader.checkpoint
    out_path = check_output_directory(out, checkpoint.directory)
    layouts, originals = _layouts(model, loader)
    owners = _owners(loader)
    with staged_directory(out_path) as staging:
        weight_map: dict[str, str] = {}
        total = 0
        pending: dict[str, torch.Tensor] = {}  # tensors of a layer made already, by source name, until their turn
        for shard, tensors in layouts.items():
            if not tensors:  # every tensor of this shard belonged to removed blocks
                continue
            writer = ShardWriter(staging / shard, tensors, checkpoint.metadata.get(shard))
            try:
                for name, info in tensors.items():
                    tensor = pending.pop(originals[name], None)
                    if tensor is None:
                        tensor, rest = _produce(loader, owners, originals[name])
                        pending.update(rest)
                    writer.write(name, tensor.to(DTYPES[info.dtype]))
                    weight_map[name] = shard
                    total += info.nbytes
                    del tensor
                    if progress is not None:
                        progress(info.nbytes, shard)
            except BaseException:
                writer.abort()
                raise
            writer.close()
        if checkpoint.sharded:
            (staging / INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
        copy_side_files(checkpoint.directory, staging)  # first: the source's generation config is the one to keep
        _write_config(model, staging)
        plan_to_json(get_plan(model), str(staging / "pruning_plan.json"))
    return out_path


def copy_side_files(source: Path, target: Path) -> None:
    """Copy the files of ``source`` that are not weights, index or config (tokenizer, ...) into ``target``, unless there."""
    for item in sorted(source.iterdir()):
        if item.is_file() and item.suffix not in _NOT_COPIED and item.name not in _WRITTEN and not (target / item.name).exists():
            shutil.copy2(item, target / item.name)


def _layouts(model: nn.Module, loader: LayerLoader) -> tuple[dict[str, dict[str, TensorInfo]], dict[str, str]]:
    """Per output shard, its tensors' names (the planned model's), dtypes and pruned shapes, in the source's order; and
    each output name's source name (they differ after removed blocks renumbered the rest).

    Tensors of removed blocks are left out; a source tensor that neither a kept nor a removed part of the planned model
    accounts for is an error.
    """
    checkpoint = loader.checkpoint
    pruned = {name: tuple(t.shape) for name, t in model.state_dict(keep_vars=True).items()}
    current = {loader.original_name(name): name for name in pruned}
    current.update({loader.source_name(o): c for o, c in list(current.items()) if o not in checkpoint.tensors})
    known = {name for name, _ in loader.original.state_dict(keep_vars=True).items()}
    layouts: dict[str, dict[str, TensorInfo]] = {}
    for shard, names in checkpoint.shards.items():
        layout = {}
        for name in names:
            if name not in current:
                if name in known:
                    continue  # a tensor of a removed block
                raise PruningError(f"{name} of {checkpoint.directory / shard} is not in the planned model; the checkpoint is "
                                   "for another architecture (check_fits would have said so before planning)")
            layout[current[name]] = TensorInfo(shard, checkpoint.tensors[name].dtype, pruned[current[name]])
        layouts[shard] = layout
    return layouts, {c: o for o, c in current.items() if o in checkpoint.tensors}


def _owners(loader: LayerLoader) -> tuple[set[str], set[str]]:
    """The layers and the raw parameters the plan prunes, by their names in the original model."""
    layers, parameters = set(), set()
    for name, entries in loader.entries_by_original().items():
        (parameters if any("dim" in e for e in entries) else layers).add(name)
    return layers, parameters


def _produce(loader: LayerLoader, owners: tuple[set[str], set[str]], name: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Source tensor ``name`` as the plan leaves it, and the other source tensors of its layer (written in their turn)."""
    layers, parameters = owners
    if name in parameters:
        return loader.load_original_parameter(name), {}
    parts = name.split(".")
    for cut in range(len(parts) - 1, -1, -1):
        layer = ".".join(parts[:cut]) if cut else "(model)"
        if layer in layers:
            prefix = "" if layer == "(model)" else layer + "."
            state = loader.load_original(layer).state_dict()
            tensors = {}
            for key, tensor in state.items():
                source = loader.source_name(prefix + key)
                if source in loader.checkpoint.tensors:
                    tensors[source] = tensor
            own = tensors.pop(name, None)
            if own is None:
                raise PruningError(f"{name} belongs to the pruned layer {layer}, which does not produce it")
            return own, tensors
    return loader.checkpoint.get(name), {}


def _write_config(model: nn.Module, staging: Path) -> None:
    config: Any = getattr(model, "config", None)
    if config is not None and callable(getattr(config, "save_pretrained", None)):
        config.save_pretrained(staging)
    generation: Any = getattr(model, "generation_config", None)
    if generation is not None and callable(getattr(generation, "save_pretrained", None)) and \
            not (staging / "generation_config.json").exists():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a config the model built by default warns that it is a default
            generation.save_pretrained(staging)
