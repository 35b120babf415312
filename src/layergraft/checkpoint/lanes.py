"""The background lanes of a write: reading copied source ranges again, to hash and scan them.

Why a module of its own: :mod:`layergraft.checkpoint.writer` copies byte ranges through the
kernel; everything that must *see* those bytes (the output's sha256, the NaN/Inf scan) reads
them from the source files here, on a few threads ("lanes", one per core), concurrently
with the copy. Each output file gets a :class:`FileQueue` (its hash needs its bytes in
order); different files run on different lanes at once. Reads use ``preadv`` into one small
buffer per thread: a memory map would count in the process's RSS, and a mapped file
truncated by another process mid-write kills the process with SIGBUS; the copy out of the
page cache into a cache-sized buffer costs about 5% of a sha256 of the same bytes.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from layergraft.checkpoint.finite import SCANNED_DTYPES, has_nonfinite, nonfinite_error
from layergraft.checkpoint.format import TensorEntry

HASH_BLOCK = 8 * 1024 * 1024  # bytes per read + hashlib call (each releases the GIL)
SCAN_BLOCK = 1024 * 1024  # bytes per read + scan: stays in the core's L2 cache for both passes


def default_lanes() -> int:
    """Background threads for a write: one per core, so each core can hash its own file."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, 8))


class Lanes:
    """The background threads of one write (``lanes`` of them), and the first error met.

    Work is queued per output file (:meth:`queue`): one file's jobs run in order, which is
    what its sha256 needs, while the jobs of different files run on different lanes at once.
    A job failure (a non-finite weight, a read error) is kept and raised in the writing
    thread at its next step, so writing stops early, and later jobs are skipped."""

    def __init__(self, lanes: int) -> None:
        self.pool = ThreadPoolExecutor(max_workers=lanes, thread_name_prefix="layergraft-write")
        self.jobs: list[Future[None]] = []
        self.error: BaseException | None = None
        self.closed = False

    def queue(self) -> FileQueue:
        return FileQueue(self)

    def run(self, fn: Callable[[], None]) -> None:
        if self.error is not None or self.closed:
            return  # the output is lost anyway; skip the remaining reads
        try:
            fn()
        except BaseException as e:  # handed to the writing thread by raise_pending
            self.error = e

    def raise_pending(self) -> None:
        if self.error is not None:
            raise self.error

    def drain(self) -> None:
        """Wait for every job, then raise the first failure."""
        for job in self.jobs:
            job.result()
        self.raise_pending()

    def close(self) -> None:
        self.closed = True
        self.pool.shutdown(wait=True, cancel_futures=True)


class FileQueue:
    """Jobs that run one after the other, in submission order, on whichever lane is free."""

    def __init__(self, bg: Lanes) -> None:
        self.bg = bg
        self.waiting: deque[tuple[Callable[[], None], Future[None]]] = deque()
        self.active = False  # a lane is running this queue's jobs
        self.lock = threading.Lock()

    def submit(self, fn: Callable[[], None]) -> Future[None]:
        done: Future[None] = Future()
        self.bg.jobs.append(done)
        with self.lock:
            self.waiting.append((fn, done))
            if self.active:
                return done
            self.active = True
        self.bg.pool.submit(self._run)
        return done

    def _run(self) -> None:
        while True:
            with self.lock:
                if not self.waiting:
                    self.active = False
                    return
                fn, done = self.waiting.popleft()
            self.bg.run(fn)
            done.set_result(None)


class Sources:
    """Input files, each opened once per write and read with ``preadv`` (no file position,
    so any thread may read any range) into a small buffer per thread, reused: the hash and
    the scan cost one copy out of the page cache into the core's cache, and memory stays
    bounded whatever the model's size."""

    def __init__(self) -> None:
        self.fds: dict[Path, int] = {}
        self.lock = threading.Lock()  # two threads may open a file first
        self.local = threading.local()
        self.stopped = False

    def stop(self) -> None:
        self.stopped = True

    def fd(self, path: Path) -> int:
        with self.lock:
            fd = self.fds.get(path)
            if fd is None:
                fd = self.fds[path] = os.open(path, os.O_RDONLY)
            return fd

    def blocks(self, path: Path, offset: int, nbytes: int, block: int) -> Iterator[memoryview]:
        """The bytes ``[offset, offset + nbytes)`` of ``path`` in blocks of ``block`` bytes
        (the last one shorter), read into this thread's buffer: use each before the next."""
        fd = self.fd(path)
        buf = self._buffer(min(block, nbytes))
        while nbytes:
            if self.stopped:
                raise OSError("write stopped")  # the output is abandoned: stop reading
            want = buf[: min(block, nbytes)]
            got = 0
            while got < len(want):  # a full block, so blocks start on element boundaries
                n = os.preadv(fd, [want[got:]], offset + got)
                if n == 0:
                    raise OSError(f"{path}: unexpected end of file at byte {offset + got}")
                got += n
            yield want
            offset += got
            nbytes -= got

    def _buffer(self, size: int) -> memoryview:
        buf = getattr(self.local, "buf", None)
        if buf is None or len(buf) < size:
            buf = self.local.buf = memoryview(bytearray(size))
        return buf

    def close(self) -> None:
        with self.lock:
            for fd in self.fds.values():
                os.close(fd)
            self.fds.clear()


def hash_range(sources: Sources, path: Path, offset: int, nbytes: int, h: Any) -> None:
    """Feed ``nbytes`` of ``path`` from ``offset`` to ``h``. hashlib releases the GIL for
    each block, and so does the read: other threads run meanwhile."""
    for block in sources.blocks(path, offset, nbytes, HASH_BLOCK):
        h.update(block)


def scan_ranges(sources: Sources, entries: list[TensorEntry]) -> None:
    """Refuse NaN/Inf in the floating tensors among ``entries``, in cache-sized blocks (a
    multiple of 8 bytes, so every block starts on an element boundary)."""
    for e in entries:
        if e.dtype not in SCANNED_DTYPES or not e.nbytes:
            continue
        for block in sources.blocks(e.file, e.offset, e.nbytes, SCAN_BLOCK):
            if has_nonfinite(block, e.dtype):
                raise nonfinite_error(e.name, e.dtype, bytes(block), e.file)
