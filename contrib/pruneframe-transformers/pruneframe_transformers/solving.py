"""Solve for the config field values that give a pruned model's shapes, from a ``Probe``'s slopes.

Every tensor dimension is one equation: its change from the model the config
builds equals the sum, over the fields that move it, of slope x change of the
field. The model is linear in each field alone (a width, a head count, heads x
a fixed head width), which is what a prune changes; the proposal is only a
proposal, and the meta-device rebuild decides.

- Dimensions with the same slopes that changed differently are a conflict:
  inside one block (one attention, one MLP) no config can say it; between
  blocks the layers were pruned differently (``Uneven``, with the value each
  block implies).
- Otherwise equations with one unknown field are solved first, repeatedly;
  where several unknown fields multiply into one width (heads x head width)
  each is tried as the one that changed, the others kept.
"""
from __future__ import annotations

import itertools
from fractions import Fraction
from typing import Iterable

import attrs

from .probing import Probe, Shapes

Coefficients = tuple[tuple[str, Fraction], ...]
_MAX_SOLUTIONS = 8


@attrs.frozen
class Row:
    """One tensor dimension: where it is, how each field moves it, and how much it changed from the config's model."""

    tensor: str
    dim: int
    block: str
    coefficients: Coefficients
    change: int
    size: int  # its size in the pruned model


@attrs.frozen
class Uneven:
    """The blocks were pruned differently: per field, the value each block implies."""

    sizes: dict[str, list[tuple[str, int]]]


@attrs.frozen
class Inexpressible:
    """No values of the probed fields give these shapes; ``why`` says which dimensions disagree."""

    why: str


def block_of(tensor: str) -> str:
    """The module that holds the layer that holds ``tensor`` (``model.layers.0.self_attn`` for its ``q_proj.weight``)."""
    owner = tensor.rpartition(".")[0]
    return owner.rpartition(".")[0]


def rows(found: Probe, shapes: Shapes) -> list[Row]:
    """An equation per dimension of every tensor ``shapes`` (the pruned model) shares with the probe's model."""
    out = []
    for tensor, shape in shapes.items():
        base = found.shapes.get(tensor)
        if base is None or len(base) != len(shape):
            continue
        for dim, (before, now) in enumerate(zip(base, shape)):
            slopes = found.slopes.get((tensor, dim), {})
            out.append(Row(tensor, dim, block_of(tensor), tuple(sorted(slopes.items())), now - before, now))
    return out


def solve(found: Probe, table: list[Row]) -> list[dict[str, int]] | Uneven | Inexpressible:
    """The field values (changed fields only) that give ``table``'s changes, fewest changed fields first; or why none can."""
    classes: dict[Coefficients, list[Row]] = {}
    for row in table:
        classes.setdefault(row.coefficients, []).append(row)
    conflicting = {c: members for c, members in classes.items() if c and len({r.change for r in members}) > 1}
    unsized = next((r for r in classes.get((), []) if r.change), None)
    if unsized is not None:
        return Inexpressible(f"{unsized.tensor} dimension {unsized.dim} is now {unsized.size}, and no config field sizes it")
    if conflicting:
        return _conflict(found, classes, conflicting)
    equations = [(c, members[0].change) for c, members in classes.items() if c]
    solutions = []
    for changes in _solutions(equations, {}):
        values = {f: found.fields[f] + int(d) for f, d in changes.items() if d}
        if all(d.denominator == 1 for d in changes.values()) and all(v >= 1 for v in values.values()) and values not in solutions:
            solutions.append(values)
    if not solutions:
        return Inexpressible("no whole positive values of " + ", ".join(sorted({f for c, _ in equations for f, _ in c}))
                             + " give these widths")
    return sorted(solutions, key=len)


def _conflict(found: Probe, classes: dict[Coefficients, list[Row]],
              conflicting: dict[Coefficients, list[Row]]) -> Uneven | Inexpressible:
    """Inexpressible if a block disagrees with itself; otherwise the value of each undetermined field in each block."""
    split = []  # (block, a dimension that moved, one that did not move as much) where a block disagrees with itself
    for members in conflicting.values():
        for block, in_block in itertools.groupby(sorted(members, key=lambda r: r.block), key=lambda r: r.block):
            in_block = list(in_block)
            if len({r.change for r in in_block}) > 1:
                kept = min(in_block, key=lambda r: abs(r.change))
                split.append((block, next(r for r in in_block if r.change != kept.change), kept))
    if split:
        _, moved, kept = split[0]
        fields = " and ".join(f for f, _ in kept.coefficients)
        others = sorted({block for block, _, _ in split[1:]} - {split[0][0]}, key=_natural)
        more = f"; likewise in {len(others)} more: {', '.join(others[:4])}{', ...' if len(others) > 4 else ''}" if others else ""
        return Inexpressible(f"{moved.tensor} dimension {moved.dim} is now {moved.size} while {kept.tensor} dimension "
                             f"{kept.dim} is {kept.size}, and every config gives the two the same size (both follow {fields})"
                             f"{more}")
    # fields the agreeing dimensions determine hold everywhere; the rest are solved block by block
    shared = _propagate([(c, members[0].change) for c, members in classes.items() if c and c not in conflicting], {}) or {}
    sizes: dict[str, list[tuple[str, int]]] = {}
    blocks: dict[str, list[Row]] = {}
    for members in conflicting.values():
        for row in members:
            blocks.setdefault(row.block, []).append(row)
    for block in sorted(blocks, key=_natural):
        solved = _propagate([(r.coefficients, r.change) for r in blocks[block]], dict(shared)) or {}
        for field, change in solved.items():
            if field not in shared and change.denominator == 1:
                sizes.setdefault(field, []).append((block, found.fields[field] + int(change)))
    return Uneven(sizes)


def _propagate(equations: Iterable[tuple[Coefficients, int]], known: dict[str, Fraction]) -> dict[str, Fraction] | None:
    """Solve every equation with one unknown field, repeatedly; None if a solved equation does not hold."""
    equations = list(equations)
    progress = True
    while progress:
        progress = False
        for coefficients, change in equations:
            unknown = [(f, s) for f, s in coefficients if f not in known]
            rest = change - sum(s * known[f] for f, s in coefficients if f in known)
            if not unknown:
                if rest:
                    return None
            elif len(unknown) == 1:
                field, slope = unknown[0]
                known[field] = Fraction(rest) / slope
                progress = True
    return known


def _solutions(equations: list[tuple[Coefficients, int]], known: dict[str, Fraction]) -> list[dict[str, Fraction]]:
    """Every solution of ``equations``, trying each unknown field of a stalled equation as the one that changed."""
    solved = _propagate(equations, dict(known))
    if solved is None:
        return []
    stalled = next((c for c, _ in equations if sum(f not in solved for f, _ in c) > 1), None)
    if stalled is None:
        return [solved]
    unknown = [f for f, _ in stalled if f not in solved]
    found: list[dict[str, Fraction]] = []
    for varied in unknown:  # the others keep their values
        kept = {f: Fraction(0) for f in unknown if f != varied}
        for solution in _solutions(equations, {**solved, **kept}):
            if solution not in found:
                found.append(solution)
        if len(found) >= _MAX_SOLUTIONS:
            break
    return found


def _natural(name: str) -> list[object]:
    """Sort key: ``layers.2`` before ``layers.10``."""
    return [int(p) if p.isdigit() else p for p in name.split(".")]
