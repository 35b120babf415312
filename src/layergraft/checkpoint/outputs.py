"""The one rule for every path layergraft writes: is this output safe, here, now?

Why one rule in one place: an output directory, a single file (``--plot``,
``--export-mergekit``, the JSON of ``diversity --out``, a generations file) and a cache entry
can all destroy an input or fail after hours of work in the same ways. Checking only
``--out`` directories once let ``layergraft diff B P --plot P/config.json`` replace an input
with a PNG and exit 0. Every command therefore calls :func:`check_output` for every path it
will write, *before any work and before anything is written*, and writes through
:mod:`layergraft.checkpoint.atomic`, which calls it again at write time.

The rule, for a path of kind ``"file"`` or ``"dir"``:

1. it is not an input, not inside an input directory, and does not contain an input;
2. an existing path has the right kind; an existing directory is replaced only with
   ``force`` (or reused, where a command continues one: ``reuse``);
3. its parent exists (``parents=True`` creates it, for caches layergraft owns) and is
   writable — proven by creating the temp file or directory beside the target and removing
   it, not by reading mode bits (root, ACLs, read-only mounts and ``/proc`` all lie to those);
4. it is then written atomically: a temp beside the target (same filesystem), renamed into
   place (:func:`temp_path`, used by every writer).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from layergraft.errors import OutputError

#: what every temp beside a target carries in its name: ``.NAME.layergraft-tmp-PID-RANDOM``
TMP_TAG = ".layergraft-tmp-"
KINDS = ("file", "dir")


def temp_path(target: Path) -> Path:
    """A fresh temp name beside ``target``; the pid lets a later run remove it once its
    writer is gone (:func:`layergraft.checkpoint.atomic.clean_stale_temps`). The target's
    suffix is kept, for writers that pick a format by it."""
    tag = f"{TMP_TAG}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    return target.parent / f".{target.name}{tag}{target.suffix}"


def input_paths(inputs: Iterable[Any]) -> list[Path]:
    """The local paths behind ``inputs``: paths, strings, opened checkpoints (their directory
    and, for a ``.gguf``, the file), ``None`` and in-memory models (skipped). A hub id that is
    not a local path names nothing on this disk that an output could touch."""
    out: list[Path] = []
    for x in inputs:
        if x is None:
            continue
        if isinstance(x, (str, os.PathLike)):
            cands = [Path(x)]
        elif hasattr(x, "path") and hasattr(x, "origin"):  # a Checkpoint
            cands = [Path(x.path), *([Path(x.origin)] if x.origin else [])]
        else:
            continue
        out += [p.resolve() for p in cands if p.exists()]
    return out


def _real(target: Path) -> Path:
    """``target`` with every existing part resolved (a symlinked parent or target included),
    so ``a/../post`` and a link to ``post`` both compare equal to ``post``."""
    if target.exists() or target.is_symlink():
        return target.resolve()
    return target.parent.resolve() / target.name


def _refuse_overlap(target: Path, real: Path, inputs: list[Path], flag: str, kind: str) -> None:
    what = "directory" if kind == "dir" else "path"
    for inp in inputs:
        if real == inp:
            raise OutputError(f"{flag} {target} is an input itself; choose a new {what}")
        if inp.is_dir() and inp in real.parents:
            raise OutputError(
                f"{flag} {target} is inside the input {inp}; choose a {what} outside it"
            )
        if real in inp.parents:
            raise OutputError(
                f"{flag} {target} contains the input {inp}; writing there could replace or delete "
                "the input — choose another directory"
            )


def _refuse_existing(target: Path, kind: str, flag: str, force: bool, reuse: bool) -> None:
    if not (target.exists() or target.is_symlink()):
        return
    if kind == "file":
        if target.is_dir():
            raise OutputError(f"{flag} {target} is a directory; give a file name")
        if not target.is_file():
            raise OutputError(f"{flag} {target} exists and is not a regular file; choose another path")  # fmt: skip
        return
    if not target.is_dir():
        raise OutputError(f"{flag} {target} exists and is not a directory; choose another path")
    if not (force or reuse):
        raise OutputError(f"{flag} {target} already exists; pass --force to replace it")


def _parent(target: Path, flag: str, parents: bool) -> Path:
    parent = target.parent
    if parent.is_dir():
        return parent
    if parent.exists() or parent.is_symlink():
        raise OutputError(f"cannot create {target}: {parent} is not a directory; choose another output path")  # fmt: skip
    if not parents:
        raise OutputError(
            f"{flag} {target}: the directory {parent} does not exist; create it or choose another path"
        )
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(
            f"cannot create {parent}: {e.strerror}; choose a writable location"
        ) from e
    return parent


def probe_writable(where: Path, target: Path, kind: str, flag: str) -> None:
    """Create (and remove) a temp of ``kind`` in ``where``: the only honest test that the
    target can be written there, whoever runs this and whatever the mount."""
    tmp = where / temp_path(target).name
    try:
        if kind == "dir":
            tmp.mkdir()
            tmp.rmdir()
        else:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            tmp.unlink()
    except OSError as e:
        raise OutputError(
            f"{flag} {target}: cannot write in {where} ({e.strerror}); choose a writable location"
        ) from e


def _probe_existing(target: Path, kind: str, flag: str) -> None:
    """A reused output is written in place: a directory gets files inside it, a file is
    appended to. Prove that without changing either."""
    if kind == "dir":
        probe_writable(target, target / "x", "file", flag)
        return
    try:
        os.close(os.open(target, os.O_WRONLY | os.O_APPEND))
    except OSError as e:
        raise OutputError(f"{flag} {target}: cannot write it ({e.strerror}); choose a writable location") from e  # fmt: skip


def check_output(
    path: str | os.PathLike[str],
    *,
    inputs: Iterable[Any] = (),
    kind: str = "file",
    flag: str = "output",
    force: bool = False,
    reuse: bool = False,
    parents: bool = False,
) -> Path:
    """Validate one output path before any work (the module doc's rule); return it absolute.

    ``inputs``: everything the command reads (paths, hub ids, checkpoints; see
    :func:`input_paths`). ``flag`` names the option in messages (``--plot``). ``force``
    allows replacing an existing directory; ``reuse`` writes into an existing directory or
    appends to an existing file (a resumable output); an existing *file* is always replaced
    atomically. ``parents`` creates a missing parent (caches only: a user's typo should not
    become a tree of directories). Raises :class:`~layergraft.errors.OutputError`; leaves
    nothing behind.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    target = Path(path).absolute()
    _refuse_overlap(target, _real(target), input_paths(inputs), flag, kind)
    _refuse_existing(target, kind, flag, force, reuse)
    parent = _parent(target, flag, parents)
    if reuse and target.exists():
        _probe_existing(target, kind, flag)
    else:
        probe_writable(parent, target, kind, flag)
    return target
