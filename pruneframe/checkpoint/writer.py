"""Writing safetensors one tensor at a time, into an output directory that appears only when it is complete.

``ShardWriter`` writes the header first (every shape and dtype is known from
the planned model before any value is read), then each tensor as it comes, so
a shard never sits in memory whole. The output directory is written through
``pruneframe.files.staged_directory`` (renamed at the end, removed on any
error), so an interrupted run leaves no output that looks complete.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..files import new_directory_problem
from .reader import NAMES, CheckpointError, TensorInfo


class ShardWriter:
    """One safetensors file whose tensors (names, dtypes, shapes) are declared up front and written in that order."""

    def __init__(self, path: Path, tensors: dict[str, TensorInfo], metadata: dict[str, str] | None = None):
        self.path = path
        self.order = list(tensors)
        self.tensors = tensors
        header: dict[str, object] = {"__metadata__": metadata or {"format": "pt"}}
        offset = 0
        for name, info in tensors.items():
            header[name] = {"dtype": info.dtype, "shape": list(info.shape), "data_offsets": [offset, offset + info.nbytes]}
            offset += info.nbytes
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
        self._file = open(path, "wb")
        self._file.write(len(text).to_bytes(8, "little") + text)
        self._next = 0

    def write(self, name: str, tensor: torch.Tensor) -> None:
        expected = self.tensors[self.order[self._next]] if self._next < len(self.order) else None
        if expected is None or name != self.order[self._next]:
            raise RuntimeError(f"{self.path.name}: {name} written out of order (expected "
                               f"{self.order[self._next] if expected else 'nothing more'})")
        if tuple(tensor.shape) != expected.shape or NAMES.get(tensor.dtype) != expected.dtype:
            raise RuntimeError(f"{name} is {tuple(tensor.shape)} {tensor.dtype}; the plan says {expected.shape} {expected.dtype}")
        data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
        self._file.write(memoryview(data.numpy()))
        self._next += 1

    def close(self) -> None:
        if self._next != len(self.order):
            self._file.close()
            raise RuntimeError(f"{self.path.name}: {len(self.order) - self._next} declared tensors were not written")
        self._file.close()

    def abort(self) -> None:
        self._file.close()


def check_output_directory(out: str | os.PathLike[str], source: str | os.PathLike[str] | None = None) -> Path:
    """The output directory as a path, refused (``CheckpointError``) if it exists, is the source or lies inside it."""
    problem = new_directory_problem(out, source)
    if problem:
        raise CheckpointError(f"the output {problem}")
    return Path(out).absolute()
