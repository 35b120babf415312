"""How many CPU threads torch computes with: an explicit count, or ``auto``.

Why not torch's default (one thread per core): torch's CPU kernels run on OpenMP, whose threads
meet at a barrier after every operation. When another process holds a core, one of our threads
is descheduled for a whole scheduler time slice and the others wait for it, at every one of
the thousands of small operations a forward pass makes. Measured on 2 cores while other work
ran: plain ``generate`` of 16x64 tokens took 136.6 s at 2 threads vs 7.5 s at 1 thread (load
about 10) and 74.3 s vs 1.3 s (load 2-3); the demo's sweep step 2,128 s vs 423 s. One thread
too few costs at most the idle speed-up of that thread; one too many can cost 10-50x.

``auto`` (the default of ``--threads``) is therefore the cores this process may use
(:func:`usable_cores`: its CPU affinity, capped by a cgroup CPU quota) minus the cores that
other processes are busy on right now (:func:`other_load`), at least 1 (:func:`auto_threads`).
An ``OMP_NUM_THREADS`` the user exported is a count chosen by hand and is kept.
``benchmarks/bench_threads.py`` measures the rule (docs/bench/threads.json).

When torch is not imported yet, the count is applied the moment it is (:class:`_OnTorchImport`):
a command refused before it loads a model pays nothing, and ``auto`` looks at the machine just
before the work starts. Not through ``OMP_NUM_THREADS``, which every child process would
inherit (Ray workers keep an inherited value instead of taking one thread each).
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import logging
import math
import os
import sys
import time
from collections.abc import Iterable
from typing import Any

log = logging.getLogger(__name__)

#: background noise (daemons, a shell) below which a core still counts as free
NOISE = 0.25


def parse_threads(text: str | int) -> int | str:
    """``"auto"`` or a count of at least 1; anything else raises ValueError naming the fix."""
    if isinstance(text, str) and text.strip().lower() == "auto":
        return "auto"
    try:
        n = int(str(text).strip())
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a thread count nor auto; give e.g. 1 or auto"
        ) from None
    if n < 1:
        raise ValueError(f"must be at least 1, not {n}; give a positive count or auto")
    return n


def auto_threads(cores: int, load: float) -> int:
    """The rule: ``cores`` minus the cores other processes keep busy (``load``), a core
    counted as taken once it is more than :data:`NOISE` busy; at least 1, at most ``cores``."""
    taken = max(0, math.ceil(load - NOISE))
    return max(1, min(cores, cores - taken))


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity (a container's cpuset, ``taskset``),
    capped by a cgroup v2 CPU quota (``cpu.max``) where one is set."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows
        cores = os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def _cpu_times(cpus: Iterable[int] | None) -> tuple[float, float] | None:
    """``(busy, total)`` clock ticks of ``cpus`` (all when None) from ``/proc/stat``."""
    try:
        with open("/proc/stat") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    wanted = None if cpus is None else {f"cpu{i}" for i in cpus}
    busy = total = 0.0
    for line in lines:
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu" or (wanted and name not in wanted):
            continue
        v = [float(x) for x in fields[:8]]  # user nice system idle iowait irq softirq steal
        total += sum(v)
        busy += sum(v) - v[3] - v[4]
    return (busy, total) if total else None


def other_load(window: float = 0.2) -> float:
    """The cores other processes keep busy right now: the busy share of this process's CPUs
    over ``window`` seconds, read from ``/proc/stat`` while this thread sleeps (so none of it
    is ours); where there is no ``/proc``, the 1-minute load average. Now, not the last
    minute: the load average still counts a command that has just finished (a pipeline's
    previous step), and hardly yet one that has just started."""
    try:
        cpus: list[int] | None = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = None
    start = _cpu_times(cpus)
    if start is None:
        try:
            return float(os.getloadavg()[0])
        except (AttributeError, OSError):
            return 0.0
    time.sleep(window)
    end = _cpu_times(cpus) or start
    busy, total = end[0] - start[0], end[1] - start[1]
    n = len(cpus) if cpus else (os.cpu_count() or 1)
    return n * busy / total if total > 0 else 0.0


def resolve_threads(spec: int | str = "auto") -> tuple[int, str]:
    """The count ``spec`` means here and now, and why in words (for the log)."""
    spec = parse_threads(spec)
    if spec != "auto":
        return int(spec), "given"
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) >= 1:
        return int(env), "auto: OMP_NUM_THREADS is set"
    cores, load = usable_cores(), other_load()
    return auto_threads(cores, load), f"auto: {cores} usable cores, {load:.1f} busy with other work"


def _set_torch(torch: Any, spec: int | str) -> int:
    n, why = resolve_threads(spec)
    torch.set_num_threads(n)
    with contextlib.suppress(RuntimeError):  # legal once, before any inter-op work started
        torch.set_num_interop_threads(n)
    log.info("torch threads: %d (%s)", n, why)
    return n


class _OnTorchImport(importlib.abc.MetaPathFinder):
    """Applies the count right after ``import torch`` has run, wherever that happens. It stays
    in ``sys.meta_path`` until then: transformers asks ``importlib.util.find_spec("torch")``
    without importing it, and the spec it gets is never executed."""

    def __init__(self, spec: int | str) -> None:
        self.spec = spec
        self.busy = False

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "torch" or self.busy:
            return None
        self.busy = True
        try:
            spec = importlib.util.find_spec("torch")  # as the other finders find it
        finally:
            self.busy = False
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module

        def exec_module(module: Any) -> None:
            run(module)
            if self in sys.meta_path:
                sys.meta_path.remove(self)
            _set_torch(module, self.spec)

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def apply_threads(spec: int | str = "auto") -> int | None:
    """Make torch use the count ``spec`` means (:func:`resolve_threads`), logged at INFO with
    its reason: now if torch is imported (returns the count), else the moment it is (returns
    None)."""
    spec = parse_threads(spec)
    for hook in [h for h in sys.meta_path if isinstance(h, _OnTorchImport)]:
        sys.meta_path.remove(hook)
    if "torch" in sys.modules:
        return _set_torch(sys.modules["torch"], spec)
    sys.meta_path.insert(0, _OnTorchImport(spec))
    return None
