"""Atomic output directories.

Why: a user's model directory must be either absent or complete. Everything is written into
a temp directory *beside* the target (same filesystem, so the final ``rename`` is atomic) and
renamed at the end; on any error, or a kill, the target is untouched. Temp dirs left by a
killed run carry the owner's pid in their name and are removed, with a message, the next
time something is written beside them.
"""

from __future__ import annotations

import contextlib
import errno
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
            if _pid_alive(pid):
                continue
            target = parent / name
            if tag == _OLD_TAG and not target.exists() and not target.is_symlink():
                # killed between "old aside" and "new in" (the fallback path of
                # _replace_dir): this is the complete previous output; put it back
                os.rename(p, target)
                log.warning("restored %s, moved aside by an interrupted run (pid %d)", target, pid)
            else:
                shutil.rmtree(p, ignore_errors=True)
                log.warning("removed %s left behind by an interrupted run (pid %d)", p, pid)
            removed.append(p)
    return removed


_RENAME_EXCHANGE = 2  # linux/fs.h


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with Linux ``renameat2(RENAME_EXCHANGE)``; False where the
    platform, libc or filesystem does not offer it (the caller then falls back)."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    rc = fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _replace_dir(new: Path, target: Path) -> None:
    """Put the complete directory ``new`` in place of the existing ``target``.

    Why an exchange: with two renames (old aside, new in) a kill between them leaves no
    target at all. ``renameat2(RENAME_EXCHANGE)`` swaps both names in one step, so the target
    is the old or the new output at every instant; the old one, now under the temp name, is
    deleted afterwards. Elsewhere the two renames are used, the first undone if the second
    fails, and a kill between them is repaired by :func:`clean_stale_temps` on the next run.
    """
    if _exchange(new, target):
        shutil.rmtree(new, ignore_errors=True)
        return
    old = target.parent / f".{target.name}{_OLD_TAG}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    os.rename(target, old)
    try:
        os.rename(new, target)
    except BaseException:
        os.rename(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


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
        raise OutputError(
            f"cannot create {target}: {parent} is not a directory; choose another output path"
        )
    return target


@contextlib.contextmanager
def atomic_dir(
    target: str | os.PathLike[str], *, force: bool = False, inputs: Iterable[Path] = ()
) -> Iterator[Path]:
    """Yield a fresh temp dir beside ``target``; on success it becomes ``target``.

    With ``force`` an existing target is replaced only after the new one is complete, in one
    atomic exchange where the OS offers it (:func:`_replace_dir`), so a failure or a kill
    never loses the old output.

    A full disk (``ENOSPC``/``EDQUOT``) anywhere inside becomes an :class:`OutputError`
    naming the target, once the temp dir is removed: the kernel's error names no file, and
    the user needs to know which location to free or change.
    """
    t = Path(target).absolute()
    clean_stale_temps(t.parent, t.name)  # first: it may put back a previous output
    target = check_output_target(target, force=force, inputs=inputs)
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(
            f"cannot create {parent}: {e.strerror}; choose a writable location"
        ) from e
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
            _replace_dir(tmp, target)
        else:
            os.rename(tmp, target)
        _fsync_dir(parent)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            # the kernel's error names no file; say which output, and that nothing is left
            raise OutputError(
                f"no space left on the device of {parent} while writing {target.name} (nothing was kept); "
                "free space there or choose another output location, then run again"
            ) from e
        raise
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


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Replace one file in a single rename (a reader never sees half of it)."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return p


def write_json_atomic(path: str | os.PathLike[str], obj: object) -> Path:
    """:func:`write_text_atomic` of ``obj`` as indented JSON."""
    import json

    return write_text_atomic(path, json.dumps(obj, indent=2, default=str) + "\n")
