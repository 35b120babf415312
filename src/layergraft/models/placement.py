"""Where a model computes and in which dtype: one vocabulary for every command.

Why one place: every command that runs a model (crc, sweep, generate, compare, scores, prune,
compare-recovery, ppl, lm-eval, demo) takes the same ``--device``, ``--dtype`` and
``--device-map`` and must mean the same thing by them:

* ``device``: ``auto`` (default: CUDA when present, else CPU), ``cpu``, ``cuda``, ``cuda:1``, ...
* ``dtype``: ``auto`` (default) is the checkpoint's own dtype on an accelerator and float32
  on the CPU — bf16 matmuls on a CPU are slow and move CRC numbers by ~0.015 on a 135M model,
  so CPU runs compute in float32 unless asked otherwise; or one of ``bfloat16``, ``float16``,
  ``float32``.
* ``device_map``: accelerate's placement (``auto``, ``balanced``, a device, or an explicit map
  that may send layers to ``"disk"``) for models larger than one device; it replaces
  ``device``, so giving both is refused.

Statistics that must not lose digits (pruning's calibration Grams, CRC probabilities) are
accumulated in float64 whatever the compute dtype.

"Is this placement possible here?" is answered here, once, before any work: the device type
is one we run on, its backend is really available on this machine, its index is within the
count, a device map's strategy or devices are real, and an explicit map names real modules of
each model it will place (:func:`check_placement`; the map itself:
:mod:`layergraft.models.device_map`). A command that finds out only when the model is moved
has often written a journal or a generations file by then.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from layergraft.errors import InputError
from layergraft.models.device_map import module_tree, resolve_device_map

DTYPES: tuple[str, ...] = ("auto", "bfloat16", "float16", "float32")
_CPU_LIKE = ("cpu", "disk", "meta")
#: the device types a model can run on here, and accelerate's placement strategies
DEVICE_TYPES: tuple[str, ...] = ("cpu", "cuda", "mps", "xpu")
STRATEGIES: tuple[str, ...] = ("auto", "balanced", "balanced_low_0", "sequential")
_DEVICE_HELP = "cpu, cuda, cuda:N, mps, xpu or auto"


def _backend(kind: str) -> tuple[bool, int, str]:
    """``(available, device count, why not)`` of an accelerator backend on this machine."""
    import torch

    if kind == "cuda":
        if torch.cuda.is_available():
            return True, torch.cuda.device_count(), ""
        build = torch.version.cuda
        why = (
            f"this torch ({torch.__version__}) is built without CUDA"
            if build is None
            else "no CUDA device is visible (driver, CUDA_VISIBLE_DEVICES)"
        )
        return False, 0, why
    if kind == "mps":
        mps = getattr(torch.backends, "mps", None)
        ok = bool(mps is not None and mps.is_available())
        return ok, int(ok), "" if ok else "MPS (Apple GPU) is not available here"
    xpu = getattr(torch, "xpu", None)
    ok = bool(xpu is not None and xpu.is_available())
    return ok, (xpu.device_count() if ok else 0), "" if ok else "no Intel XPU is available here"


def check_device(
    device: Any, flag: str = "--device", fix: str = "use --device cpu (or auto)"
) -> None:
    """Refuse a device this machine cannot compute on, in one line naming the fix: an
    unknown type (``tpu``), an accelerator that is absent (``cuda`` on a CPU-only machine) or
    an index beyond the count (``cuda:7`` with one GPU). ``None``/``auto`` always pass; an
    int is a CUDA index (accelerate's convention for device-map values)."""
    if device is None or device == "auto":
        return
    text = f"cuda:{device}" if isinstance(device, int) else str(device).strip()
    m = re.fullmatch(r"([a-z]+)(?::(\d+))?", text)
    if not m:
        raise InputError(f"{flag} {text!r} is not a device; use {_DEVICE_HELP}")
    kind, index = m.group(1), m.group(2)
    if kind not in DEVICE_TYPES:
        raise InputError(f"{flag} {text}: unknown device type {kind!r}; use {_DEVICE_HELP}")
    if kind == "cpu":
        return
    ok, count, why = _backend(kind)
    if not ok:
        raise InputError(f"{flag} {text}: {why}; {fix} on this machine")
    if index is not None and int(index) >= count:
        names = f"{kind}:0" if count == 1 else f"{kind}:0 to {kind}:{count - 1}"
        have = f"{count} {kind.upper()} device{'s' if count != 1 else ''} ({names})"
        raise InputError(f"{flag} {text}: this machine has {have}; use an index below {count}")


def check_device_map_form(device_map: Any) -> None:
    """A strategy, one device, or a map whose every value is a device or ``"disk"``."""
    if device_map is None:
        return
    if isinstance(device_map, dict):
        for key, dev in device_map.items():
            if not isinstance(key, str):
                raise InputError(f"--device-map key {key!r} is not a module name; write names as strings")  # fmt: skip
            if dev != "disk":
                fix = 'use "cpu" or "disk" for it'
                check_device(dev, flag=f"--device-map maps {key!r} to", fix=fix)
        return
    text = str(device_map)
    if text in STRATEGIES:
        return
    if re.fullmatch(r"[a-z]+(:\d+)?", text) and text.split(":")[0] in DEVICE_TYPES:
        check_device(text, flag="--device-map", fix="use --device-map cpu (or auto)")
        return
    raise InputError(
        f"--device-map {text!r} is neither a strategy ({', '.join(STRATEGIES)}) nor a device; "
        'use one of those, a device such as cuda:0, or a JSON map like {"model.layers.0": "cpu"}'
    )


def check_placement(
    device: Any = None,
    dtype: Any = "auto",
    device_map: Any = None,
    *,
    models: Iterable[Any] = (),
) -> Placement:
    """Everything about a placement that can be known before a model is loaded: the
    :class:`Placement` checks, plus, for an explicit map, its keys against every model in
    ``models`` (opened checkpoints or local directories; a hub id or ``.gguf`` is checked when
    it is loaded; :func:`~layergraft.models.device_map.resolve_device_map`).
    Commands call it before they write or load anything."""
    place = Placement(device, dtype, device_map)
    if isinstance(device_map, dict):
        for spec in models:
            place.resolved_map(spec)
    return place


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _map_is_cpu(device_map: Any) -> bool:
    """Whether an accelerate device map computes on the CPU only (a strategy like ``auto``
    counts as CPU when no GPU is present)."""
    if isinstance(device_map, dict):
        return all(str(v).split(":")[0] in _CPU_LIKE for v in device_map.values())
    text = str(device_map)
    if text in ("auto", "balanced", "balanced_low_0", "sequential"):
        return default_device() == "cpu"
    return text.split(":")[0] in _CPU_LIKE


@dataclass(frozen=True)
class Placement:
    """``--device`` / ``--dtype`` / ``--device-map`` as one validated value (see module doc)."""

    device: str | None = None
    dtype: Any = "auto"
    device_map: Any = None

    def __post_init__(self) -> None:
        if isinstance(self.dtype, str) and self.dtype not in DTYPES:
            raise InputError(f"--dtype {self.dtype!r} is not one of {', '.join(DTYPES)}")
        if self.device not in (None, "auto") and self.device_map is not None:
            raise InputError(
                "give --device or --device-map, not both (a device map places every layer itself)"
            )
        check_device(self.device)
        check_device_map_form(self.device_map)

    def resolved_map(self, spec: Any) -> Any:
        """The device map to load the model at ``spec`` with: a strategy or device as given;
        an explicit map checked against the model's modules and made flat
        (:func:`~layergraft.models.device_map.resolve_device_map`)."""
        if not isinstance(self.device_map, dict):
            return self.device_map
        tree = module_tree(spec)
        if tree is None:  # not opened yet: checked when it is loaded
            return self.device_map
        where = str(getattr(spec, "origin", "") or getattr(spec, "path", "") or spec)
        return resolve_device_map(self.device_map, tree, where)

    @property
    def target(self) -> str:
        """The device the whole model goes to (meaningless with a device map)."""
        return default_device() if self.device in (None, "auto") else str(self.device)

    @property
    def on_cpu(self) -> bool:
        if self.device_map is not None:
            return _map_is_cpu(self.device_map)
        return self.target.split(":")[0] == "cpu"

    def torch_dtype(self) -> Any:
        """What to pass to ``from_pretrained(dtype=...)``: a torch dtype, or ``"auto"`` for
        the checkpoint's own dtype."""
        import torch

        if not isinstance(self.dtype, str):
            return self.dtype  # already a torch dtype (library callers)
        if self.dtype == "auto":
            return torch.float32 if self.on_cpu else "auto"
        return getattr(torch, self.dtype)

    def describe(self) -> dict[str, Any]:
        """JSON-ready record for results files (what the numbers were computed with)."""
        dt = self.torch_dtype()
        return {
            "device": None if self.device_map is not None else self.target,
            "device_map": self.device_map,
            "dtype": dt if isinstance(dt, str) else str(dt).removeprefix("torch."),
        }
