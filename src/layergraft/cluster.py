"""Joining a Ray cluster and sizing its workers: what distributed sweeps and comparisons share.

Ray is an optional extra (``pip install 'layergraft[ray]'``), imported inside functions only,
so a missing Ray is one line naming the install command, and ``import layergraft`` never
pays for it. Shipped to workers are paths, never weights: every node must see the checkpoints
(and, for hub ids and ``.gguf`` inputs, the caches) at the same paths.
"""

from __future__ import annotations

import logging
import math
import re
import socket
from typing import Any

from layergraft.errors import InputError

log = logging.getLogger(__name__)
RAY_MISSING = "--ray needs Ray, an optional extra: pip install 'layergraft[ray]'"


def import_ray() -> Any:
    """The ``ray`` module, or one line naming the install command."""
    try:
        import ray
    except ImportError as e:
        raise InputError(RAY_MISSING) from e
    return ray


def check_worker_options(workers: int | None, gpus_per_worker: float | None) -> None:
    if workers is not None and workers < 1:
        raise InputError(f"--workers must be at least 1, not {workers}")
    if gpus_per_worker is not None and not (
        math.isfinite(gpus_per_worker) and gpus_per_worker >= 0
    ):
        raise InputError(f"--gpus-per-worker must be 0 or more, not {gpus_per_worker}")


def last_line(e: BaseException) -> str:
    """The last line of a remote error (its cause), without the exception's class name."""
    lines = [x.strip() for x in str(e).splitlines() if x.strip()]
    return re.sub(r"^[\w.]+(Error|Exception): ", "", lines[-1]) if lines else type(e).__name__


def unreachable(address: str, timeout: float = 5.0) -> str | None:
    """Why ``host:port`` (optionally ``ray://host:port``) takes no TCP connection, or None.

    ``ray.init`` retries an address nobody listens on for minutes before it gives up; one
    socket connect answers in at most ``timeout`` seconds. Addresses without a port are left
    to Ray."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        return None
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        return e.strerror or type(e).__name__
    return None


#: what ``--ray ADDRESS`` may be: auto/local, HOST:PORT (a head's GCS), ray://HOST[:PORT]
_ADDRESS = re.compile(r"auto|local|ray://[\w.\-\[\]:]+|[\w.\-\[\]:]*[\w\]]:\d{1,5}")


def check_address(address: str | None) -> None:
    """Refuse, in one line, a malformed address or an explicit one that takes no connection
    (before any output is written: executors call this when they are built, ``connect``
    again when they join). Ray itself reads a malformed address late, after the command has
    created its outputs, and fails there."""
    port = address.rpartition(":")[2] if address else ""
    bad_port = port.isdigit() and not 0 < int(port) < 65536
    if address is not None and (not _ADDRESS.fullmatch(address) or bad_port):
        raise InputError(
            f"--ray {address!r} is not a Ray address; write HOST:PORT (e.g. 10.0.0.5:6379), "
            "ray://HOST:10001, or give --ray without a value for a local cluster"
        )
    why = unreachable(address) if address else None  # "auto" has no port: left to Ray
    if why:
        raise InputError(
            f"cannot join the Ray cluster at {address}: {why}; start one there with `ray start "
            "--head`, check host and port, or pass --ray without an address (a local cluster)"
        )


def connect(ray: Any, address: str | None) -> bool:
    """Join the cluster at ``address``; ``"auto"``/None: the one this machine belongs to
    (``RAY_ADDRESS``, or the one ``ray start`` started here), else a new local one. True when
    this call started Ray (the caller then shuts it down)."""
    if ray.is_initialized():
        return False
    check_address(address)
    where = None if address in (None, "auto") else address
    try:
        ray.init(
            address=where, include_dashboard=False, logging_level=logging.WARNING,
            log_to_driver=False,
        )  # fmt: skip
    except (ConnectionError, ValueError, RuntimeError) as e:
        raise InputError(
            f"cannot join the Ray cluster at {address}: {last_line(e)}; start one with `ray "
            "start --head` or pass --ray without an address (a local cluster)"
        ) from e
    return True


def plan_workers(
    resources: dict[str, float], workers: int | None, gpus: float | None, jobs: int
) -> tuple[int, float]:
    """How many workers, with how many GPUs each: one per GPU (``gpus`` per worker, default 1
    where the cluster has GPUs) or one per CPU, never more than the cluster holds or than there
    are jobs."""
    have_gpu, have_cpu = float(resources.get("GPU", 0)), float(resources.get("CPU", 1))
    g = (1.0 if have_gpu >= 1 else 0.0) if gpus is None else float(gpus)
    if g > 0 and have_gpu < g:
        raise InputError(
            f"--gpus-per-worker {g:g}: the Ray cluster has {have_gpu:g} GPUs; add GPU nodes "
            "or pass --gpus-per-worker 0 (CPU workers)"
        )
    fits = int(have_gpu // g) if g > 0 else int(have_cpu)
    n = workers or fits
    if n > fits:
        log.warning(
            "--workers %d: the Ray cluster holds only %d such workers; using %d", n, fits, fits
        )
        n = fits
    return max(1, min(n, jobs)), g
