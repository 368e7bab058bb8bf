"""Progress bars on stderr (tqdm), off unless asked for: ``with bar("scoring groups", total=n, enabled=True) as b: b.update()``.

stdout is never written to, so a command's printed figures stay parseable.
A disabled bar is a no-op object and does not even import tqdm.
"""
from __future__ import annotations

import sys
from typing import Any


class _NoBar:
    """What a disabled bar is: every tqdm call the code makes, doing nothing."""

    def __enter__(self) -> "_NoBar":
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def update(self, n: int = 1) -> None:
        return None

    def set_postfix_str(self, text: str) -> None:
        return None


def bar(desc: str, total: int | None = None, enabled: bool = False, unit: str = "it") -> Any:
    """A progress bar for ``total`` units of work (None: unknown) on stderr; it disappears when done."""
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False, dynamic_ncols=True)


def stderr_is_terminal() -> bool:
    """Whether a person is watching stderr (bars are on by default only then)."""
    return bool(getattr(sys.stderr, "isatty", None)) and sys.stderr.isatty()


__all__ = ["bar", "stderr_is_terminal"]
