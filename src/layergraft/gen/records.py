"""Generation records: one JSON line per (prompt, sample), resumable, never mixed.

A generations file is appended to batch by batch, so a killed run leaves at most one truncated
last line; :func:`read_records` ignores (or cuts) it and :func:`check_resumable` refuses a file
written by another model, by other weights at the same path (``weights``: a model trained again
keeps its path and name) or with other settings before any model loads.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from layergraft.checkpoint.reader import open_checkpoint
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
    weights: str | None = None,
) -> dict[str, Any]:
    """One generation. ``num_tokens`` counts generated tokens including the stop token;
    ``finished`` is False when ``max_new_tokens`` cut the reply off; ``weights`` is
    :func:`weights_digest` of the model (None in memory)."""
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
        "weights": weights,
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
    out: str | os.PathLike[str] | None,
    settings: SamplingSettings,
    model_name: str,
    weights: str | None = None,
) -> None:
    """Fail fast (before loading a model) if ``out`` cannot be resumed with these settings."""
    if out is None:
        return
    path = Path(out)
    if path.exists() and not path.is_file():
        raise InputError(f"{path} is not a file; give a .jsonl path for --out")
    check_compatible(read_records(path), settings, model_name, path, weights)


def check_compatible(
    records: list[dict[str, Any]],
    settings: SamplingSettings,
    model_name: str,
    path: Path,
    weights: str | None = None,
) -> None:
    """Refuse records of another model, settings or weights. A record without ``weights``
    (written before records had them) or of an in-memory model is checked on name and
    settings only."""
    want = settings.to_json()
    for rec in records:
        if rec.get("settings") != want or rec.get("model") != model_name:
            raise InputError(
                f"{path} holds generations of another model or other settings "
                f"({rec.get('model')}, {rec.get('settings')}); choose another --out or delete it"
            )
        old = rec.get("weights")
        if old is not None and weights is not None and old != weights:
            raise InputError(
                f"{path} holds generations of other weights at {model_name} (digest {old}, now "
                f"{weights}: the model changed since); choose another --out or delete it"
            )


def weights_digest(model: Any, allow_pickle: bool = False) -> str | None:
    """A short digest of a checkpoint's weights, from a sample of each tensor's bytes
    (``SafetensorsHeader.sample_sha256``), or None for an in-memory model.

    Why: records name a model by its path, and a model trained again at that path would
    otherwise resume (or be scored from) the old model's generations.
    """
    if not isinstance(model, (str, os.PathLike)):
        return None
    files = open_checkpoint(model, allow_pickle=allow_pickle).fingerprint()["files"]
    h = hashlib.sha256("".join(f"{f['name']}:{f['sample_sha256']};" for f in files).encode())
    return h.hexdigest()[:16]


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
