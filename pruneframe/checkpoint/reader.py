"""``Checkpoint``: a directory of safetensors shards (and its index), checked whole on opening, read one tensor at a time.

Opening reads only the index and each shard's header: a missing shard, an
index naming a file that is not there, a header that does not parse, a shard
shorter than its header says, or a tensor the index puts in a shard that does
not hold it are errors naming the file, before anything else happens. Tensors
are then read one at a time, only their own bytes, so no shard is loaded or
mapped whole.
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any, Iterator

import attrs
import torch
from torch import nn

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "I64": torch.int64,
          "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
          "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}
NAMES = {dtype: name for name, dtype in DTYPES.items()}


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be read as it is: the message names the file and what to do."""


@attrs.frozen
class TensorInfo:
    """Where one tensor lives: its shard, dtype name (safetensors spelling) and shape."""

    shard: str
    dtype: str
    shape: tuple[int, ...]
    start: int = 0  # where its bytes begin in the shard file

    @property
    def nbytes(self) -> int:
        count = 1
        for size in self.shape:
            count *= size
        return count * torch.empty(0, dtype=DTYPES[self.dtype]).element_size()


def read_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file, checked against the file's length."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path} is not a safetensors file: it is {size} bytes long")
            (length,) = struct.unpack("<Q", head)
            if length > size - 8:
                raise CheckpointError(f"{path} is damaged: its header claims {length} bytes, the file has {size}")
            header = json.loads(f.read(length))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is damaged: its header is not JSON ({exc}); write it again") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} is damaged: its header is not a JSON object")
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict) or entry.get("dtype") not in DTYPES or not isinstance(entry.get("shape"), list):
            raise CheckpointError(f"{path} is damaged or uses an unsupported dtype: tensor {name!r} is described as {entry!r}")
        end = max(end, int(entry["data_offsets"][1]))
    if 8 + length + end != size:
        raise CheckpointError(f"{path} is truncated or damaged: its header needs {8 + length + end} bytes, the file has {size}. "
                              "Copy or download it again.")
    header["__data_start__"] = 8 + length
    return header


class Checkpoint:
    """A Hugging Face-style directory of safetensors weights: ``model.safetensors``, or shards plus their index."""

    def __init__(self, directory: str | os.PathLike[str]):
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise CheckpointError(f"{self.directory} is not a directory; give the folder save_pretrained wrote")
        index = self.directory / INDEX
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise CheckpointError(f"{index} is damaged: it is not a safetensors index with a 'weight_map' ({exc})") from None
            if not isinstance(weight_map, dict) or not weight_map:
                raise CheckpointError(f"{index} is damaged: its 'weight_map' names no tensors")
        elif (self.directory / SINGLE).is_file():
            weight_map = None
        else:
            found = sorted(p.name for p in self.directory.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".safetensors"))
            raise CheckpointError(f"{self.directory} has no {SINGLE} or {INDEX} (weights found: {found or 'none'}); streaming "
                                  "reads safetensors: save the model with save_pretrained(..., safe_serialization=True)")
        shards = sorted(set(weight_map.values())) if weight_map else [SINGLE]
        missing = [s for s in shards if not (self.directory / s).is_file()]
        if missing:
            raise CheckpointError(f"{index} names shard files that are not in {self.directory}: {', '.join(missing)}. "
                                  "Copy the whole checkpoint directory.")
        self.tensors: dict[str, TensorInfo] = {}
        self.shards: dict[str, list[str]] = {}
        self.metadata: dict[str, Any] = {}
        for shard in shards:
            header = read_header(self.directory / shard)
            self.metadata[shard] = header.pop("__metadata__", None)
            data_start = header.pop("__data_start__")
            order = sorted(header, key=lambda n: header[n]["data_offsets"][0])
            self.shards[shard] = order
            for name in order:
                entry = header[name]
                self.tensors[name] = TensorInfo(shard, entry["dtype"], tuple(int(s) for s in entry["shape"]),
                                                data_start + int(entry["data_offsets"][0]))
        if weight_map:
            wrong = [f"{n} (in {s})" for n, s in weight_map.items() if self.tensors.get(n, TensorInfo("", "F32", ())).shard != s]
            if wrong:
                raise CheckpointError(f"{index} puts tensors in shards that do not hold them: {', '.join(wrong[:5])}"
                                      f"{' ...' if len(wrong) > 5 else ''}. The index and the shards are from different saves.")
        self._open: dict[str, Any] = {}

    @property
    def sharded(self) -> bool:
        return list(self.shards) != [SINGLE]

    def shard_bytes(self, shard: str) -> int:
        return (self.directory / shard).stat().st_size

    @property
    def largest_shard_bytes(self) -> int:
        return max(self.shard_bytes(s) for s in self.shards)

    @property
    def total_bytes(self) -> int:
        return sum(self.shard_bytes(s) for s in self.shards)

    def get(self, name: str) -> torch.Tensor:
        """Tensor ``name``, read from its shard: only its bytes, into memory of its own (no mapping of the shard).

        A memory-mapped read would leave every page it touched resident in this process until the shard is
        closed; reading the bytes keeps the resident memory at the tensors in use.
        """
        info = self.tensors[name]
        handle = self._open.get(info.shard)
        if handle is None:
            handle = self._open[info.shard] = open(self.directory / info.shard, "rb")
        data = bytearray(info.nbytes)
        handle.seek(info.start)
        if handle.readinto(data) != info.nbytes:
            raise CheckpointError(f"{self.directory / info.shard} ended inside tensor {name}; the file changed since it was opened")
        if not data:
            return torch.empty(info.shape, dtype=DTYPES[info.dtype])
        return torch.frombuffer(data, dtype=DTYPES[info.dtype]).reshape(info.shape)

    def close(self) -> None:
        for handle in self._open.values():
            handle.close()
        self._open.clear()

    def __enter__(self) -> "Checkpoint":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __iter__(self) -> Iterator[str]:
        return iter(self.tensors)

    def check_fits(self, model: nn.Module) -> None:
        """Raise ``CheckpointError`` unless every tensor of ``model``'s state dict is here with its shape (tied ones once)."""
        expected = {name: tuple(t.shape) for name, t in model.state_dict(keep_vars=True).items()}
        aliases = tied_names(model)
        missing = [n for n in expected if n not in self.tensors and not any(a in self.tensors for a in aliases.get(n, ()))]
        unexpected = [n for n in self.tensors if n not in expected]
        shapes = [f"{n}: {self.tensors[n].shape} here, {expected[n]} in the model" for n in expected
                  if n in self.tensors and self.tensors[n].shape != expected[n]]
        parts = [f"{what}: {', '.join(names[:4])}{' ...' if len(names) > 4 else ''}"
                 for what, names in (("missing", missing), ("not in the model", unexpected), ("other shapes", shapes)) if names]
        if parts:
            raise CheckpointError(f"the weights in {self.directory} do not fit the model its config builds ({'; '.join(parts)}). "
                                  "Was config.json edited, or are the shards from another model?")


def tied_names(model: nn.Module) -> dict[str, tuple[str, ...]]:
    """For each state-dict name of a tensor that several names share (tied embeddings), the other names."""
    by_id: dict[int, list[str]] = {}
    for name, tensor in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]:
        by_id.setdefault(id(tensor), []).append(name)
    return {n: tuple(o for o in names if o != n) for names in by_id.values() if len(names) > 1 for n in names}
