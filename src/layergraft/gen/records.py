"""Generation records: one JSON line per (prompt, sample), resumable, never mixed.

A generations file is appended to batch by batch, so a killed run leaves at most one truncated
last line; :func:`read_records` ignores (or cuts) it and :func:`check_resumable` refuses a file
written by another model or with other settings before any model loads.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from layergraft.errors import InputError
from layergraft.gen.sampling import SamplingSettings
from layergraft.gen.tasks import TaskPrompt
from layergraft.jsonl import json_lines

log = logging.getLogger(__name__)

RECORD_VERSION = 1
PathLike = str | os.PathLike[str]


def make_record(
    prompt: TaskPrompt,
    sample: int,
    text: str,
    num_tokens: int,
    finished: bool,
    settings: SamplingSettings,
    model_name: str,
    backend: str,
) -> dict[str, Any]:
    """One generation. ``num_tokens`` counts generated tokens including the stop token;
    ``finished`` is False when ``max_new_tokens`` cut the reply off."""
    return {
        "prompt_id": prompt.id,
        "sample": sample,
        "task": prompt.task,
        "prompt": prompt.prompt,
        "text": text,
        "num_tokens": num_tokens,
        "finished": finished,
        "reference": prompt.reference(),
        "settings": settings.to_json(),
        "model": model_name,
        "backend": backend,
        "version": RECORD_VERSION,
    }


def read_records(path: str | os.PathLike[str], *, repair: bool = False) -> list[dict[str, Any]]:
    """Records of a generations file. A last line without its newline is an interrupted write:
    it is ignored (and cut off the file when ``repair``). Any other bad line is an error."""
    p = Path(path)
    if not p.exists():
        return []
    data = p.read_bytes()
    cut = len(data)
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        log.warning("%s: ignoring a truncated last line (an interrupted run)", p)
        if repair:
            with open(p, "r+b") as f:
                f.truncate(cut)
    records = []
    hint = "it is not a generations file, or it is corrupt — remove the line or the file"
    for n, rec in json_lines(data[:cut].decode("utf-8"), str(p), hint):
        if not isinstance(rec, dict) or "prompt_id" not in rec or "text" not in rec:
            raise InputError(
                f"{p}: line {n} is not a generation record (no prompt_id/text); give a file written by layergraft generate"
            )
        records.append(rec)
    return records


def drop_partial_line(path: str | os.PathLike[str]) -> None:
    """Cut a last line without its newline (an interrupted write) off ``path``."""
    p = Path(path)
    if not p.is_file():
        return
    data = p.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(p, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


def check_resumable(
    out: str | os.PathLike[str] | None, settings: SamplingSettings, model_name: str
) -> None:
    """Fail fast (before loading a model) if ``out`` cannot be resumed with these settings."""
    if out is None:
        return
    path = Path(out)
    if path.exists() and not path.is_file():
        raise InputError(f"{path} is not a file; give a .jsonl path for --out")
    check_compatible(read_records(path), settings, model_name, path)


def check_compatible(
    records: list[dict[str, Any]], settings: SamplingSettings, model_name: str, path: Path
) -> None:
    want = settings.to_json()
    for rec in records:
        if rec.get("settings") != want or rec.get("model") != model_name:
            raise InputError(
                f"{path} holds generations of another model or other settings "
                f"({rec.get('model')}, {rec.get('settings')}); choose another --out or delete it"
            )


def group_by_prompt(records: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Records grouped by prompt id (first-seen order), samples sorted by index."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault(str(r["prompt_id"]), []).append(r)
    for g in groups.values():
        g.sort(key=lambda r: int(r.get("sample", 0)))
    return groups


def default_model_name(model: PathLike | Any) -> str:
    """What records call the model: an existing path made absolute (so ``./post`` and ``post``
    resume the same file), a hub id as given, or the class name of an in-memory model."""
    if isinstance(model, (str, os.PathLike)):
        p = Path(model)
        return str(p.resolve()) if p.exists() else str(model)
    return type(model).__name__
