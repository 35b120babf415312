"""V_end's modes, and the end markers it counts (defined once, in :mod:`layergraft.gen.ends`).

A reply V_end counts as ended is one generation stops on: ``crc``, ``sweep`` and every
generation (validation included) take a model's end markers from
:func:`~layergraft.gen.ends.find_end_markers`, re-exported here for the CRC code.
"""

from __future__ import annotations

from layergraft.errors import InputError
from layergraft.gen.ends import EndMarkers, EndWarning, find_end_markers

__all__ = ["V_END_MODES", "EndMarkers", "EndWarning", "check_v_end", "find_end_markers"]

#: how V_end counts a reply as ended (``--v-end``): the character then an end marker
#: (strict), also after one closing mark (closers), or not computed (off)
V_END_MODES = ("strict", "closers", "off")


def check_v_end(v_end: str) -> None:
    """Refuse an unknown ``--v-end`` (``crc`` calls it before any model loads)."""
    if v_end not in V_END_MODES:
        raise InputError(f"--v-end {v_end!r} is not one of {', '.join(V_END_MODES)}")
