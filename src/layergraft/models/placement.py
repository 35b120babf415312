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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from layergraft.errors import InputError

DTYPES: tuple[str, ...] = ("auto", "bfloat16", "float16", "float32")
_CPU_LIKE = ("cpu", "disk", "meta")


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
