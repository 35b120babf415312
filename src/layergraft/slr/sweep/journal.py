"""The durable, resumable results file of a sweep: ``OUT/intervals.jsonl``.

Why a journal: an exhaustive sweep of a deep pair runs for hours. Every finished unit's rows
(references, the intervals of one start, a soup alpha) are appended in one write and flushed
to the device (``fsync``) before the next unit starts, so a kill loses at most the unit in
flight, and ``--resume`` continues from what is on disk. The first line records everything
that decides the numbers (inputs, proxy and prompts, engine, placement); resuming with
anything different is refused, so a journal never mixes two experiments. ``results.json`` is
assembled from the journal alone, so it is the same whether the sweep ran in one go, was
resumed, or was spread over workers.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from layergraft.errors import InputError, OutputError
from layergraft.jsonl import json_lines

JOURNAL = "intervals.jsonl"
VERSION = 1


def row_key(row: dict[str, Any]) -> str:
    if row["kind"] == "reference":
        return f"reference:{row['name']}"
    if row["kind"] == "soup":
        return f"soup:{row['alpha']:g}"
    tail = f":{row['parts']}" if row.get("parts", "all") != "all" else ""
    return f"interval:{row['start']}:{row['end']}{tail}"


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k} ({_short(a)} there, {_short(b)} now)")
    return out


class Journal:
    """An open ``intervals.jsonl``: its header's config, the rows so far, appending more."""

    def __init__(self, path: Path, config: dict[str, Any], rows: list[dict[str, Any]]) -> None:
        self.path, self.config, self.rows = path, config, rows

    @property
    def done(self) -> set[str]:
        return {row_key(r) for r in self.rows}

    @classmethod
    def open(
        cls, out: str | os.PathLike[str], config: dict[str, Any], *, resume: bool, force: bool
    ) -> Journal:
        """Start ``out/intervals.jsonl`` (a new directory; ``force`` deletes an old one first)
        or, with ``resume``, continue the one there after checking it records ``config``."""
        out = Path(out)
        path = out / JOURNAL
        config = json.loads(json.dumps(config))  # the form it has when read back
        if resume:
            if not path.is_file():
                raise InputError(
                    f"--resume: {path} does not exist; run the sweep without --resume to start it"
                )
            return cls._continue(path, config)
        if out.exists() or out.is_symlink():
            if not force:
                raise OutputError(
                    f"output {out} already exists; pass --resume to continue that sweep or --force to start over"
                )
            if not out.is_dir():
                raise OutputError(
                    f"output {out} exists and is not a directory; choose another path"
                )
            shutil.rmtree(out)
        try:
            out.mkdir(parents=True)
        except OSError as e:
            raise OutputError(
                f"cannot create {out}: {e.strerror}; choose a writable location"
            ) from e
        journal = cls(path, config, [])
        journal._write([{"kind": "header", "version": VERSION, "config": config}])
        return journal

    @classmethod
    def _continue(cls, path: Path, config: dict[str, Any]) -> Journal:
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):  # a kill mid-write: drop the partial line
            with open(path, "r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)
            data = data[: data.rfind(b"\n") + 1]
        lines = list(
            json_lines(
                data.decode("utf-8"), str(path), "it is not a sweep journal; start a new --out"
            )
        )
        if not lines or not isinstance(lines[0][1], dict) or lines[0][1].get("kind") != "header":
            raise InputError(
                f"{path} has no sweep header; it is not a sweep journal — start a new --out"
            )
        header = lines[0][1]
        if header.get("version") != VERSION:
            raise InputError(
                f"{path} was written by another layergraft version (journal v{header.get('version')}); start a new --out"
            )
        diff = _differences(header.get("config", {}), config)
        if diff:
            raise InputError(
                f"--resume: {path} records another sweep: {diff[0]}; resume with the same "
                "inputs and settings, or start a new --out"
            )
        return cls(path, config, [obj for _, obj in lines[1:]])

    def append(self, rows: list[dict[str, Any]]) -> None:
        """Add one unit's rows durably (one write, flushed and fsynced)."""
        self._write(rows)
        # as read back: a resumed sweep and an uninterrupted one see the very same rows
        self.rows.extend(json.loads(json.dumps(r)) for r in rows)

    def _write(self, rows: list[dict[str, Any]]) -> None:
        text = "".join(json.dumps(r) + "\n" for r in rows)
        data = memoryview(text.encode("utf-8"))
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            while data:
                data = data[os.write(fd, data) :]
            os.fsync(fd)
        finally:
            os.close(fd)
