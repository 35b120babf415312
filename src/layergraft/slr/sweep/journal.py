"""The durable, resumable results file of a sweep: ``OUT/intervals.jsonl``.

Why a journal: an exhaustive sweep of a deep pair runs for hours. The contract:

* The first line records everything that decides the rows (inputs, proxy and prompts,
  every row setting of :class:`~layergraft.slr.sweep.config.SweepConfig`, engine, placement)
  and the selection settings of the run that wrote it.
* Every finished unit (references, the intervals of one start, a soup) is ONE line, appended
  in one write and flushed to the device (``fsync``) before the next unit starts. A kill
  inside a unit loses that unit, a kill inside the write leaves a partial last line; either
  way no unit is half-recorded, so a resumed sweep runs exactly the missing units and its
  ``results.json`` is byte-identical to an uninterrupted run's.
* Resuming reads the file without changing it, refuses a different row setting in one line
  (selection settings may change: the rows are the same, and results.json records the ones
  used), refuses a malformed line naming its number, and only then drops a partial last line.
* ``results.json`` is assembled from the journal alone, so it is the same whether the sweep
  ran in one go, was resumed, or was spread over workers.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from layergraft.errors import InputError, OutputError
from layergraft.slr.sweep.engines import interval_key

JOURNAL = "intervals.jsonl"
VERSION = 2
_FIX = "start a new --out (or --force to start over)"


def row_key(row: dict[str, Any]) -> str:
    stage = f"s{row['stage']}:" if row.get("stage") else ""
    if row["kind"] == "reference":
        return f"{stage}reference:{row['name']}"
    if row["kind"] == "soup":
        return f"{stage}soup:{row['alpha']:g}"
    return stage + interval_key(
        row["start"], row["end"], row.get("parts", "all"), row.get("alpha", 1.0)
    )


def rows_in_plan_order(
    rows: Sequence[dict[str, Any]], units: Sequence[Any]
) -> list[dict[str, Any]]:
    """The rows of ``units``' keys, in the units' order (the latest row of a repeated key).

    Why plan order and not the journal's: on Ray rows arrive in the order workers finish, and
    a resumed journal may hold rows of units this run did not plan; whatever reads the rows
    (halving's "cannot win" rivals, the order of "dropped") must not depend on either.
    """
    by_key = {row_key(r): r for r in rows}
    return [by_key[k] for u in units for k in u.keys if k in by_key]


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _contrast(a: str, b: str, room: int = 24) -> tuple[str, str]:
    """Two different strings cut so that the cut parts still differ: up to a few characters
    past the first difference, with a leading "..." when that is far in (two sha256 digests
    cut to the same 57-character prefix would show the reader no difference at all)."""
    i = next((j for j, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    lo = max(0, i - room // 2)

    def cut(s: str) -> str:
        part = s[lo : i + room // 2]
        return ("..." if lo else "") + part + ("..." if i + room // 2 < len(s) else "")

    return repr(cut(a)), repr(cut(b))


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Each differing leaf of two JSON values, named by its path (``inputs.post.content[1]``)."""
    out = []
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new)):
            out += _differences(old.get(k), new.get(k), f"{prefix}.{k}" if prefix else str(k))
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for j, (a, b) in enumerate(zip(old, new, strict=True)):
            out += _differences(a, b, f"{prefix}[{j}]")
        return out
    if old != new:
        if isinstance(old, str) and isinstance(new, str) and max(len(old), len(new)) > 60:
            a, b = _contrast(old, new)
        else:
            a, b = _short(old), _short(new)
        out.append(f"{prefix} ({a} there, {b} now)")
    return out


def _as_recorded_then(old: Any, new: Any) -> Any:
    """``new``'s inputs without the ``content`` sample where the journal's header has none.

    Why: journals started before inputs recorded a sample of their bytes would otherwise be
    refused as "another sweep" after an upgrade, losing hours of rows; they resume checked on
    what they recorded (origin, names, sizes, headers), as they were when written.
    """
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return new
    return {
        role: {k: v for k, v in rec.items() if k != "content"}
        if isinstance(rec, dict) and isinstance(old.get(role), dict) and "content" not in old[role]
        else rec
        for role, rec in new.items()
    }


def _row_problem(row: Any) -> str | None:
    """Why ``row`` is not a sweep row, or None."""
    if not isinstance(row, dict) or not isinstance(row.get("scores"), dict):
        return "is not a row with scores"
    kind = row.get("kind")
    if kind == "reference":
        return None if row.get("name") in ("post", "base") else "is a reference without a name"
    if kind == "soup":
        return None if isinstance(row.get("alpha"), (int, float)) else "is a soup without alpha"
    if kind == "interval":
        ok = all(isinstance(row.get(k), int) for k in ("start", "end"))
        return None if ok else "is an interval row without start and end"
    return f"has kind {kind!r}"


@dataclass
class Contents:
    """What a journal holds, read without changing it."""

    path: Path
    header: dict[str, Any]
    rows: list[dict[str, Any]]
    partial: int  # bytes of a partial last line (a kill mid-write), dropped on resume
    size: int  # bytes up to the end of the last complete line


def read_journal(path: Path, problem: Any = None, key: Any = None, what: str = "sweep") -> Contents:
    """Parse ``path`` strictly (one line naming each problem); nothing is written.
    ``problem(row)`` says why a row is malformed and ``key(row)`` names it (the sweep's row
    rules by default; validation brings its own)."""
    problem = problem or _row_problem
    key = key or row_key
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    partial = len(data) - end
    header: dict[str, Any] | None = None
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    for n, raw in enumerate(data[:end].decode("utf-8", errors="replace").splitlines(), 1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError:
            raise InputError(f"{path} line {n} is not valid JSON; {_FIX}") from None
        if n == 1:
            if not isinstance(obj, dict) or obj.get("kind") != "header":
                raise InputError(
                    f"{path} has no {what} header; it is not a {what} journal — {_FIX}"
                )
            if obj.get("version") != VERSION:
                raise InputError(
                    f"{path} was written by another layergraft version (journal "
                    f"v{obj.get('version')}, this one writes v{VERSION}); {_FIX}"
                )
            header = obj
            continue
        unit = obj.get("rows") if isinstance(obj, dict) and obj.get("kind") == "unit" else None
        if not isinstance(unit, list) or not unit:
            raise InputError(f"{path} line {n} is not a unit of {what} rows; {_FIX}")
        for row in unit:
            why = problem(row)
            if why is not None:
                raise InputError(f"{path} line {n}: a row {why}; {_FIX}")
            name = key(row)
            if name in seen:
                raise InputError(f"{path} line {n} records {name} a second time; {_FIX}")
            seen.add(name)
            rows.append(row)
    if header is None:
        raise InputError(f"{path} has no {what} header; it is not a {what} journal — {_FIX}")
    return Contents(path, header, rows, partial, end)


def done_keys(contents: Contents) -> set[str]:
    """The sweep rows a journal holds, by key."""
    return {row_key(r) for r in contents.rows}


def setting_differences(
    contents: Contents, config: dict[str, Any], keys: Sequence[str] | None = None
) -> list[str]:
    """How the row settings a journal records differ from ``config``'s, one phrase each
    (``"generation.n (1 there, 2 now)"``), the user's own settings first; ``keys`` limits
    the comparison to those top-level keys (``selection`` is never compared)."""
    old = {k: v for k, v in contents.header.get("config", {}).items() if k != "selection"}
    new = {k: v for k, v in config.items() if k != "selection"}
    if keys is not None:
        old = {k: v for k, v in old.items() if k in keys}
        new = {k: v for k, v in new.items() if k in keys}
    if "inputs" in new:
        new["inputs"] = _as_recorded_then(old.get("inputs"), new.get("inputs"))
    # the user's own settings first: "rows.max_len" says more than a fingerprint does
    first = {"rows": old.pop("rows", None)}, {"rows": new.pop("rows", None)}
    return _differences(*first) + _differences(old, new)


def check_settings(
    contents: Contents,
    config: dict[str, Any],
    what: str = "sweep",
    fix: str = "resume with the same inputs and settings, or start a new --out",
    keys: Sequence[str] | None = None,
) -> None:
    """Refuse a journal whose recorded row settings differ from ``config``'s (one line)."""
    diff = setting_differences(contents, config, keys)
    if diff:
        raise InputError(f"--resume: {contents.path} records another {what}: {diff[0]}; {fix}")


def inspect_journal(out: str | os.PathLike[str], config: dict[str, Any]) -> Contents:
    """For ``--dry-run --resume``: the sweep journal in ``out`` read and checked, never changed."""
    return Journal.inspect(out, config)


class Journal:
    """An open journal (``intervals.jsonl`` by default): its header's config, the rows so
    far, appending more. ``name``/``problem``/``key``/``what`` make the same contract hold
    for another kind of unit (validation's generations)."""

    name = JOURNAL
    what = "sweep"
    fix = "resume with the same inputs and settings, or start a new --out"
    #: the config keys that decide the rows (None: all but ``selection``)
    checked: tuple[str, ...] | None = None

    def __init__(self, path: Path, config: dict[str, Any], rows: list[dict[str, Any]]) -> None:
        self.path, self.config, self.rows = path, config, rows

    @staticmethod
    def problem(row: Any) -> str | None:
        return _row_problem(row)

    @staticmethod
    def key(row: dict[str, Any]) -> str:
        return row_key(row)

    @property
    def done(self) -> set[str]:
        return {self.key(r) for r in self.rows}

    @classmethod
    def inspect(cls, out: str | os.PathLike[str], config: dict[str, Any]) -> Contents:
        """The journal in ``out`` read and checked against ``config``, never changed."""
        path = Path(out) / cls.name
        if not path.is_file():
            raise InputError(
                f"--resume: {path} does not exist; run the sweep without --resume to start it"
            )
        contents = read_journal(path, cls.problem, cls.key, cls.what)
        check_settings(contents, json.loads(json.dumps(config)), cls.what, cls.fix, cls.checked)
        return contents

    @classmethod
    def open(
        cls, out: str | os.PathLike[str], config: dict[str, Any], *, resume: bool, force: bool
    ) -> Journal:
        """Start ``out/<name>`` (in a new directory; ``force`` deletes an old one first) or,
        with ``resume``, continue the one there after checking it records ``config``."""
        out = Path(out)
        path = out / cls.name
        config = json.loads(json.dumps(config))  # the form it has when read back
        if resume:
            contents = cls.inspect(out, config)
            if (
                contents.partial
            ):  # a kill mid-write: drop the partial line, now that all checks passed
                with open(path, "r+b") as f:
                    f.truncate(contents.size)
            return cls(path, config, contents.rows)
        if cls.name == JOURNAL and (out.exists() or out.is_symlink()):
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
            out.mkdir(exist_ok=cls.name != JOURNAL)
        except OSError as e:
            raise OutputError(
                f"cannot create {out}: {e.strerror}; choose a writable location"
            ) from e
        path.unlink(missing_ok=True)
        journal = cls(path, config, [])
        journal._write({"kind": "header", "version": VERSION, "config": config})
        return journal

    def append(self, rows: list[dict[str, Any]]) -> None:
        """Add one unit's rows durably (one line, one write, flushed and fsynced)."""
        self._write({"kind": "unit", "rows": rows})
        # as read back: a resumed sweep and an uninterrupted one see the very same rows
        self.rows.extend(json.loads(json.dumps(r)) for r in rows)

    def _write(self, obj: dict[str, Any]) -> None:
        data = memoryview((json.dumps(obj) + "\n").encode("utf-8"))
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            while data:
                data = data[os.write(fd, data) :]
            os.fsync(fd)
        finally:
            os.close(fd)
