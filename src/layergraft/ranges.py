"""Layer ranges: one convention everywhere.

0-based, half-open ``[start, end)``, written ``start:end``; several as ``0:2,12:20``.
``2:5`` means layers 2, 3 and 4. The same text appears in the CLI, YAML recipes, JSON
results, logs and plots, so parsing and formatting live here and nowhere else.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from layergraft.errors import RangeError

Range = tuple[int, int]
_ONE = re.compile(r"^\s*(-?\d+)\s*:\s*(-?\d+)\s*$")


def parse_range(text: str, num_layers: int | None = None) -> Range:
    m = _ONE.match(text)
    if not m:
        raise RangeError(
            f"layer range {text!r} is not of the form start:end; write it as two 0-based indices, end excluded, e.g. 2:5 for layers 2,3,4"
        )
    return check_range((int(m.group(1)), int(m.group(2))), num_layers)


def check_range(r: Sequence[int], num_layers: int | None = None) -> Range:
    s, e = int(r[0]), int(r[1])
    txt = f"{s}:{e}"
    if s < 0 or e < 0:
        raise RangeError(
            f"layer range {txt} has a negative index; layers are numbered from 0, so write e.g. 0:{max(e, 1)}"
        )
    if e < s:
        raise RangeError(
            f"layer range {txt} is reversed; write it as {e}:{s} (start:end, end excluded)"
        )
    if e == s:
        raise RangeError(
            f"layer range {txt} is empty (end is excluded); for layer {s} alone write {s}:{s + 1}"
        )
    if num_layers is not None and e > num_layers:
        raise RangeError(
            f"layer range {txt} is out of bounds: the model has {num_layers} layers; use ranges within 0:{num_layers}"
        )
    return (s, e)


def parse_ranges(spec: str | Iterable[Any], num_layers: int | None = None) -> list[Range]:
    """Parse ``"0:2,5:7"`` (or a YAML list of ``"s:e"`` strings / ``[s, e]`` pairs).

    Refuses empty, reversed, negative, out-of-bounds and overlapping ranges; returns them
    sorted by start.
    """
    if isinstance(spec, str):
        parts = [p for p in spec.split(",")]
        if not spec.strip() or any(not p.strip() for p in parts):
            raise RangeError(f"layer ranges {spec!r} contain an empty item; write e.g. 0:2,5:7")
        ranges = [parse_range(p, num_layers) for p in parts]
    else:
        ranges = []
        for item in spec:
            if isinstance(item, str):
                ranges.append(parse_range(item, num_layers))
            elif (
                isinstance(item, Sequence)
                and len(item) == 2
                and all(isinstance(x, int) for x in item)
            ):
                ranges.append(check_range(item, num_layers))
            else:
                raise RangeError(
                    f"layer range {item!r} is neither 'start:end' nor [start, end]; write e.g. '2:5' or [2, 5]"
                )
        if not ranges:
            raise RangeError("no layer ranges given; write e.g. 2:5")
    ranges.sort()
    for (s1, e1), (s2, e2) in zip(ranges, ranges[1:], strict=False):
        if s2 < e1:
            raise RangeError(
                f"layer ranges {s1}:{e1} and {s2}:{e2} overlap; merge them into {s1}:{max(e1, e2)}"
            )
    return ranges


def format_range(r: Range) -> str:
    return f"{r[0]}:{r[1]}"


def format_ranges(ranges: Iterable[Range]) -> str:
    return ",".join(format_range(r) for r in ranges)


def layers_of(ranges: Iterable[Range]) -> list[int]:
    """The layer indices covered by ``ranges``, ascending."""
    return sorted({i for s, e in ranges for i in range(s, e)})


def complement(ranges: Iterable[Range], num_layers: int) -> list[Range]:
    """The maximal ranges of ``[0, num_layers)`` not covered by ``ranges``."""
    covered = set(layers_of(ranges))
    out: list[Range] = []
    start = None
    for i in range(num_layers + 1):
        inside = i < num_layers and i not in covered
        if inside and start is None:
            start = i
        elif not inside and start is not None:
            out.append((start, i))
            start = None
    return out
