"""Atomic outputs: directories and single files.

Why: a user's model directory (or plot, or JSON) must be either absent or complete. Everything
is written into a temp *beside* the target (same filesystem, so the final ``rename`` is atomic)
and renamed at the end; on any error, or a kill, the target is untouched. Temps left by a
killed run carry the owner's pid in their name and are removed, with a message, the next
time something is written beside them. Whether a path may be written at all is the one rule
of :mod:`layergraft.checkpoint.outputs`, which every writer here applies again at write time.
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
from typing import Any

from layergraft.checkpoint.outputs import TMP_TAG as _TMP_TAG
from layergraft.checkpoint.outputs import check_output, temp_path
from layergraft.errors import OutputError

log = logging.getLogger(__name__)

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
    """Remove temps (directories or files) for ``name`` in ``parent`` whose writer is gone."""
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
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
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
    target: str | os.PathLike[str],
    *,
    force: bool = False,
    inputs: Iterable[Any] = (),
    flag: str = "output",
    parents: bool = False,
) -> Path:
    """Validate an output *directory* before any work starts, so a bad target fails in
    milliseconds instead of after a long computation: :func:`~layergraft.checkpoint.outputs.check_output`
    with ``kind="dir"``."""
    return check_output(target, inputs=inputs, kind="dir", flag=flag, force=force, parents=parents)


@contextlib.contextmanager
def atomic_dir(
    target: str | os.PathLike[str],
    *,
    force: bool = False,
    inputs: Iterable[Any] = (),
    flag: str = "output",
    parents: bool = False,
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
    target = check_output_target(target, force=force, inputs=inputs, flag=flag, parents=parents)
    parent = target.parent
    tmp = temp_path(target)
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


@contextlib.contextmanager
def atomic_file(
    path: str | os.PathLike[str],
    *,
    inputs: Iterable[Any] = (),
    flag: str = "output",
    fsync: bool = False,
) -> Iterator[Path]:
    """Yield a temp path beside the file ``path``; once the block has written it, it replaces
    ``path`` in one rename (a reader never sees half a file, a failure leaves the old one).

    The output rule is applied first (``inputs``, ``flag``: see
    :func:`~layergraft.checkpoint.outputs.check_output`), also when the command checked the
    path before its work: hours may have passed. An OS error while writing becomes one
    :class:`OutputError` naming the file, after the temp is removed.
    """
    target = check_output(path, inputs=inputs, kind="file", flag=flag)
    clean_stale_temps(target.parent, target.name)
    tmp = temp_path(target)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, target)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        full = e.errno in (errno.ENOSPC, errno.EDQUOT)
        why = "no space left on the device" if full else e.strerror
        raise OutputError(
            f"{flag} {target}: cannot write it ({why}; nothing was kept); free space there or "
            "choose another location, then run again"
        ) from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(
    path: str | os.PathLike[str], text: str, *, inputs: Iterable[Any] = (), flag: str = "output"
) -> Path:
    """Replace one file in a single rename (:func:`atomic_file`)."""
    with atomic_file(path, inputs=inputs, flag=flag) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path).absolute()


def write_json_atomic(
    path: str | os.PathLike[str], obj: object, *, inputs: Iterable[Any] = (), flag: str = "output"
) -> Path:
    """:func:`write_text_atomic` of ``obj`` as indented JSON."""
    import json

    text = json.dumps(obj, indent=2, default=str) + "\n"
    return write_text_atomic(path, text, inputs=inputs, flag=flag)
