"""Writing outputs so that a failure leaves nothing behind: new directories checked first, staged, renamed at the end.

Imports nothing heavy (no torch), so the command line checks an output path
before it builds a model.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


def umask() -> int:
    """The process's file-mode creation mask (read without changing it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def new_directory_problem(out: str | os.PathLike[str], source: str | os.PathLike[str] | None = None,
                          may_exist: bool = False) -> str | None:
    """Why ``out`` cannot be made as a new directory (it exists, is ``source`` or lies inside it, has no parent), or None."""
    out_path = Path(out).absolute()
    if source is not None:
        src = Path(source).resolve()
        if out_path.resolve() == src or src in out_path.resolve().parents:
            return f"{out}: that is the checkpoint being read, or inside it; write to a new directory"
    if out_path.exists() and not may_exist:
        return f"{out}: it exists; give a new directory (nothing is overwritten)"
    if not out_path.parent.is_dir():
        return f"{out}: its parent {out_path.parent} is not a directory; create it first"
    if not os.access(out_path.parent, os.W_OK):
        return f"{out}: its parent {out_path.parent} is not writable"
    return None


@contextlib.contextmanager
def staged_directory(out: Path) -> Iterator[Path]:
    """A new temporary directory beside ``out``, renamed to ``out`` when the block ends well, removed otherwise."""
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield staging
        os.chmod(staging, 0o777 & ~umask())  # mkdtemp makes it 0700: give it the mode a new directory gets
        if out.exists():
            raise FileExistsError(f"the output {out} appeared while it was being written; the result was not moved there")
        os.rename(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


__all__ = ["new_directory_problem", "staged_directory", "umask"]
