"""``print_tool``: a model's printout before and after pruning, changed lines shown as ``before => after``.

Example::

    tp.utils.print_tool.before_pruning(model)
    pruner.step()
    tp.utils.print_tool.after_pruning(model)   # prints, and returns, the comparison
"""
from __future__ import annotations

import difflib
from typing import Any


class print_tool:  # noqa: N801 - Torch-Pruning's name
    """Remembers ``str(model)`` in ``before_pruning`` and compares it with the model's printout in ``after_pruning``."""

    _before_pruning: str | None = None

    @staticmethod
    def before_pruning(model: Any) -> None:
        """Remember how ``model`` prints now."""
        print_tool._before_pruning = str(model)

    @staticmethod
    def after_pruning(model: Any, do_print: bool = True) -> str:
        """The printout of ``model`` with each changed line as ``old => new`` (printed too with ``do_print``).

        Lines that appeared are shown as ``=> new``, lines that went as ``old =>``. Raises ``ValueError`` if
        ``before_pruning`` was not called first; afterwards the remembered printout is forgotten.
        """
        before = print_tool._before_pruning
        if before is None:
            raise ValueError("call tp.utils.print_tool.before_pruning(model) first, to record the model before pruning")
        old, new = before.split("\n"), str(model).split("\n")
        out: list[str] = []
        for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, old, new, autojunk=False).get_opcodes():
            if tag == "equal":
                out += old[i1:i2]
                continue
            pairs = min(i2 - i1, j2 - j1)
            out += [f"{old[i1 + k]} => {new[j1 + k].lstrip(' ')}" for k in range(pairs)]
            out += [f"{line} =>" for line in old[i1 + pairs:i2]]
            out += [f"=> {line.lstrip(' ')}" for line in new[j1 + pairs:j2]]
        text = "\n".join(out) + "\n"
        if do_print:
            print(text)
        print_tool._before_pruning = None
        return text


__all__ = ["print_tool"]
