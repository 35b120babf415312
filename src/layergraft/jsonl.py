"""Reading JSON-lines input: one parser, one error message style, for every data file
(CRC prompts, task sets, calibration text, generation records)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from layergraft.errors import InputError


def json_lines(text: str, where: str, hint: str = "fix or remove it") -> Iterator[tuple[int, Any]]:
    """``(line number, parsed object)`` for every non-blank line; a bad line is an
    :class:`InputError` naming the file, the line and ``hint``."""
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield n, json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{where}: line {n} is not valid JSON ({exc.msg}); {hint}") from exc
