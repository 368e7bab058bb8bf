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
from ..plan import get_plan, plan_steps, plan_to_json
from .onload import LayerLoader
from .reader import INDEX, NAMES, TensorInfo
from .writer import ShardWriter, check_output_directory, staged_directory

_NOT_COPIED = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack")
_WRITTEN = ("config.json", INDEX, "pruning_plan.json")


def save_pruned(model: nn.Module, loader: LayerLoader, out: str | os.PathLike[str],
                progress: Callable[[int, str], None] | None = None) -> Path:
    """Write ``model`` (pruned on the meta device by a plan; ``loader`` reads its checkpoint) to the new directory ``out``.

    ``progress(bytes, shard)`` is called after each tensor. Returns the output path.
    """
    checkpoint = loader.checkpoint
    out_path = check_output_directory(out, checkpoint.directory)
    layouts = _layouts(model, loader)
    owners = _owners(loader)
    with staged_directory(out_path) as staging:
        weight_map: dict[str, str] = {}
        total = 0
        for shard, tensors in layouts.items():
            writer = ShardWriter(staging / shard, tensors, checkpoint.metadata.get(shard))
            try:
                pending: dict[str, torch.Tensor] = {}
                for name, info in tensors.items():
                    tensor = pending.pop(name, None)
                    if tensor is None:
                        tensor, rest = _produce(loader, owners, name)
                        pending.update(rest)
                    writer.write(name, tensor.to(_dtype(info.dtype)))
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


def _dtype(name: str) -> torch.dtype:
    return {v: k for k, v in NAMES.items()}[name]


def _layouts(model: nn.Module, loader: LayerLoader) -> dict[str, dict[str, TensorInfo]]:
    """Per output shard, its tensors' names, dtypes and pruned shapes (from the planned model), in the source's order."""
    checkpoint = loader.checkpoint
    pruned = {name: tuple(t.shape) for name, t in model.state_dict(keep_vars=True).items()}
    layouts: dict[str, dict[str, TensorInfo]] = {}
    for shard, names in checkpoint.shards.items():
        layout = {}
        for name in names:
            if name not in pruned:
                raise PruningError(f"{name} of {checkpoint.directory / shard} is not in the planned model; the checkpoint is "
                                   "for another architecture (check_fits would have said so before planning)")
            layout[name] = TensorInfo(shard, checkpoint.tensors[name].dtype, pruned[name])
        layouts[shard] = layout
    return layouts


def _owners(loader: LayerLoader) -> tuple[set[str], set[str]]:
    """The layers and the raw parameters the plan prunes."""
    layers, parameters = set(), set()
    for step in plan_steps(loader.model):
        for entry in step:
            (parameters if "dim" in entry else layers).add(entry["layer"])
    return layers, parameters


def _produce(loader: LayerLoader, owners: tuple[set[str], set[str]], name: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Tensor ``name`` as the plan leaves it, and the other checkpoint tensors of its layer (written when their turn comes)."""
    layers, parameters = owners
    if name in parameters:
        return loader.load_parameter(name), {}
    parts = name.split(".")
    for cut in range(len(parts) - 1, -1, -1):
        layer = ".".join(parts[:cut]) if cut else "(model)"
        if layer in layers:
            prefix = "" if layer == "(model)" else layer + "."
            state = loader.load_layer(layer).state_dict()
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
