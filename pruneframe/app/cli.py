"""The ``pruneframe`` command line: ``pruneframe prune``, ``inspect``, ``graph`` and ``plugins``.

The parser and the argument checks live in ``arguments``, each command in its own module
(``prune_command``, ``plugins_command``, ``inspect_commands``), imported only when it runs so ``--help`` stays instant.
"""
from __future__ import annotations

import contextlib
import os
import sys
import warnings
from typing import Any, Iterator

from .arguments import DATA_FREE, build_parser

__all__ = ["DATA_FREE", "main"]


def main(argv: list[str] | None = None) -> int:
    from .. import __version__

    args = build_parser(__version__).parse_args(argv)
    if args.command == "plugins":
        from . import plugins_command as command
        run = command.run
    elif args.command == "prune":
        from . import prune_command as command  # type: ignore[no-redef]
        run = command.run
    else:
        run = args.run  # inspect, graph: set by inspect_commands.add_subcommands
    try:
        with _warnings_as_lines():
            return run(args)
    except BrokenPipeError:  # stdout closed early (`pruneframe ... | head`): stop quietly, as other tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


@contextlib.contextmanager
def _warnings_as_lines() -> Iterator[None]:
    """Inside, a warning prints as ``warning: <message>`` on stderr: the command's words, not a source line of pruneframe."""
    shown = warnings.showwarning

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None,
             line: str | None = None) -> None:
        print(f"warning: {message}", file=file or sys.stderr)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = shown


if __name__ == "__main__":
    raise SystemExit(main())
