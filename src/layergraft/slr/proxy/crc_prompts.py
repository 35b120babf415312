"""CRC prompt sets: bundled (``letters``, ``digits``, ``all``) or a user's JSONL file.

Prompts are data, one JSON object per line: ``id``, ``category``, ``prompt`` (the request to
the model) and ``valid`` (the characters that count as a valid answer). They are validated
before any model loads, so a bad file costs milliseconds.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from layergraft.errors import InputError
from layergraft.jsonl import json_lines


@dataclass(frozen=True)
class CrcPrompt:
    """One CRC item: the user request and the set of valid one-character answers."""

    id: str
    category: str
    prompt: str
    valid: tuple[str, ...]


def bundled_crc_sets() -> list[str]:
    """Names of the CRC prompt sets shipped in the package (``letters``, ``digits``, ...)."""
    root = resources.files("layergraft") / "data" / "crc"
    return sorted(p.name[: -len(".jsonl")] for p in root.iterdir() if p.name.endswith(".jsonl"))


def parse_prompt(obj: Any, where: str, n: int) -> CrcPrompt:
    if not isinstance(obj, dict):
        raise InputError(f"{where}: {'line ' + str(n) + ' ' if n else ''}is not a JSON object; "
                         'write one {"prompt": ..., "valid": [...]} per line')  # fmt: skip
    prompt = obj.get("prompt")
    valid = obj.get("valid")
    if not isinstance(prompt, str) or not prompt.strip():
        raise InputError(f'{where}: line {n} has no "prompt" text; add the request to the model')
    if (
        not isinstance(valid, list)
        or not valid
        or not all(isinstance(v, str) and v.strip() for v in valid)
    ):
        raise InputError(
            f'{where}: line {n} has no valid set; give "valid" as a non-empty list of '
            'characters, e.g. "valid": ["d", "k", "q"]'
        )
    uniq = tuple(dict.fromkeys(v.strip() for v in valid))
    return CrcPrompt(
        id=str(obj.get("id", f"{Path(where).stem}-{n}")),
        category=str(obj.get("category", Path(where).stem)),
        prompt=prompt,
        valid=uniq,
    )


def load_crc_prompts(source: str | Path | Iterable[str] = "all") -> list[CrcPrompt]:
    """Load CRC prompts from a bundled set name, ``"all"`` bundled sets, or a user JSONL file.

    ``source`` may also be a list of such names/paths. Raises :class:`InputError` for a missing
    file, a malformed line, or a line without a valid set (with a hint how to fix it).
    """
    if not isinstance(source, (str, Path)):
        return [p for s in source for p in load_crc_prompts(s)]
    text_source = str(source)
    bundled = bundled_crc_sets()
    if text_source == "all":
        return [p for name in bundled for p in load_crc_prompts(name)]
    if text_source in bundled and not Path(text_source).exists():
        res = resources.files("layergraft") / "data" / "crc" / f"{text_source}.jsonl"
        text, where = res.read_text(encoding="utf-8"), f"{text_source}.jsonl"
    else:
        path = Path(text_source)
        if not path.is_file():
            raise InputError(
                f"CRC prompt file {text_source!r} not found; give a JSONL file or one of the "
                f"bundled sets: {', '.join(bundled + ['all'])}"
            )
        text, where = path.read_text(encoding="utf-8"), str(path)
    prompts = [parse_prompt(obj, where, n) for n, obj in json_lines(text, where)]
    if not prompts:
        raise InputError(f"{where} holds no CRC prompts; add one JSON object per line")
    return prompts
