"""What a hybrid takes from the base: layer ranges, each with the parts it restores.

SLR restores whole decoder layers; sublayer restoration restores only their attention, MLP or
norms (:mod:`layergraft.arch.parts` says which tensor is which). One value describes both:
a list of :class:`Restored` — a range and its parts — read from ``--layers 4:7 --parts attn``
or from a recipe's ``layers:`` list, where each range may name its own parts::

    layers:
      - {range: "4:7", parts: attn}
      - "8:10"                       # whole layers

and written back the same way (recipes, provenance, model cards). Whole layers (``all``) is
the plain SLR of before, byte for byte.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from layergraft.arch.parts import parse_parts
from layergraft.arch.spec import LAYER_PARTS, LayerPart
from layergraft.errors import RangeError
from layergraft.ranges import Range, format_range, parse_ranges


@dataclass(frozen=True)
class Restored:
    """Layers ``range`` restored from the base, for ``parts`` (canonical order)."""

    range: Range
    parts: tuple[LayerPart, ...] = LAYER_PARTS

    @property
    def whole(self) -> bool:
        return self.parts == LAYER_PARTS

    @property
    def parts_text(self) -> str:
        return "all" if self.whole else ",".join(self.parts)

    def as_recipe(self) -> str | dict[str, str]:
        text = format_range(self.range)
        return text if self.whole else {"range": text, "parts": self.parts_text}

    def label(self) -> str:
        text = format_range(self.range)
        return text if self.whole else f"{text} ({self.parts_text})"


def parse_restored(
    layers: str | Iterable[Any], parts: str | Iterable[str] = "all", num_layers: int | None = None
) -> list[Restored]:
    """``layers`` as ranges (``"4:7,8:10"``, a list of ``"s:e"`` / ``[s, e]``, or recipe
    items ``{"range": ..., "parts": ...}``), each with its own parts or else ``parts``.
    Ranges are validated together (bounds, overlap) by :func:`layergraft.ranges.parse_ranges`."""
    default = parse_parts(parts)
    items = [layers] if isinstance(layers, str) else list(layers)
    ranges_in: list[Any] = []
    own: list[tuple[LayerPart, ...] | None] = []
    for item in items:
        if isinstance(item, dict):
            unknown = set(item) - {"range", "parts"}
            if "range" not in item or unknown:
                raise RangeError(
                    f"recipe layer item {item!r}: write it as {{range: '4:7', parts: attn}} "
                    "(parts optional)"
                )
            ranges_in.append(item["range"])
            own.append(parse_parts(item["parts"]) if "parts" in item else None)
        elif isinstance(item, str):
            for piece in item.split(","):
                ranges_in.append(piece)
                own.append(None)
        else:
            ranges_in.append(item)
            own.append(None)
    ranges = parse_ranges(ranges_in, num_layers)  # sorted; the order of ``own`` must follow
    order = sorted(range(len(ranges_in)), key=lambda k: _as_range(ranges_in[k], num_layers))
    return [Restored(ranges[i], own[k] or default) for i, k in enumerate(order)]


def _as_range(item: Any, num_layers: int | None) -> Range:
    return parse_ranges([item], num_layers)[0]


def layer_parts(restored: Sequence[Restored]) -> dict[int, set[LayerPart]]:
    """Layer index -> the parts restored from the base there."""
    out: dict[int, set[LayerPart]] = {}
    for r in restored:
        for i in range(*r.range):
            out.setdefault(i, set()).update(r.parts)
    return out


def format_restored(restored: Sequence[Restored]) -> str:
    """``4:7 (attn), 8:10`` — the one-line form for logs, titles and model cards."""
    return ", ".join(r.label() for r in restored)


def all_whole(restored: Sequence[Restored]) -> bool:
    return all(r.whole for r in restored)


def plain_ranges(restored: Sequence[Restored]) -> list[Range]:
    return [r.range for r in restored]


def range_text(restored: Sequence[Restored]) -> str:
    """``4:7,8:10`` (ranges only)."""
    return ",".join(format_range(r.range) for r in restored)
