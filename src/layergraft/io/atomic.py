"""Atomic output directories.

Why: a user's model directory must be either absent or complete. Everything is written into
a temp directory *beside* the target (same filesystem, so the final ``rename`` is atomic) and
renamed at the end; on any error, or a kill, the target is untouched. Temp dirs left by a
killed run carry the owner's pid in their name and are removed, with a message, the next
time something is written beside them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

from layergraft.errors import OutputError

log = logging.getLogger(__name__)

_TMP_TAG = ".layergraft-tmp-"
_OLD_TAG = ".layergraft-old-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_temps(parent: Path, name: str) -> list[Path]:
    """Remove temp dirs for ``name`` in ``parent`` whose writer process is gone."""
    removed: list[Path] = []
    if not parent.is_dir():
        return removed
    for p in parent.iterdir():
        for tag in (_TMP_TAG, _OLD_TAG):
            prefix = f".{name}{tag}"
            if not p.name.startswith(prefix):
                continue
            try:
                pid = int(p.name[len(prefix) :].split("-", 1)[0])
            except ValueError:
                continue
            if not _pid_alive(pid):
                shutil.rmtree(p, ignore_errors=True)
                log.warning("removed %s left behind by an interrupted run (pid %d)", p, pid)
                removed.append(p)
    return removed


def check_output_target(
    target: str | os.PathLike[str], *, force: bool = False, inputs: Iterable[Path] = ()
) -> Path:
    """Validate an output directory before any work starts, so a bad target fails in
    milliseconds instead of after a long computation."""
    target = Path(target).absolute()
    for inp in inputs:
        inp = Path(inp).resolve()
        t = target.resolve() if target.exists() else target.parent.resolve() / target.name
        if t == inp:
            raise OutputError(f"output {target} is the input model itself; choose a new directory")
        if inp.is_dir() and inp in t.parents:
            raise OutputError(
                f"output {target} is inside the input {inp}; choose a directory outside it"
            )
        if t.is_dir() and t in inp.parents:
            raise OutputError(
                f"output {target} contains the input {inp}; replacing it would delete the input — choose another directory"
            )
    if target.exists() or target.is_symlink():
        if not target.is_dir():
            raise OutputError(f"output {target} exists and is not a directory; choose another path")
        if not force:
            raise OutputError(f"output {target} already exists; pass --force to replace it")
    parent = target.parent
    if parent.exists() and not parent.is_dir():
        raise OutputError(f"cannot create {target}: {parent} is not a directory")
    return target


@contextlib.contextmanager
def atomic_dir(
    target: str | os.PathLike[str], *, force: bool = False, inputs: Iterable[Path] = ()
) -> Iterator[Path]:
    """Yield a fresh temp dir beside ``target``; on success it becomes ``target``.

    With ``force`` an existing target is replaced only after the new one is complete
    (rename old aside, rename new in, delete old), so a failure never loses the old output.
    """
    target = check_output_target(target, force=force, inputs=inputs)
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(
            f"cannot create {parent}: {e.strerror}; choose a writable location"
        ) from e
    clean_stale_temps(parent, target.name)
    tmp = parent / f".{target.name}{_TMP_TAG}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
    except OSError as e:
        raise OutputError(
            f"cannot write in {parent}: {e.strerror}; choose a writable location"
        ) from e
    try:
        yield tmp
        _fsync_dir(tmp)
        if target.exists():
            old = parent / f".{target.name}{_OLD_TAG}{os.getpid()}-{uuid.uuid4().hex[:8]}"
            os.rename(target, old)
            os.rename(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, target)
        _fsync_dir(parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
