"""Refusing NaN / Inf weights, found in the raw bytes of a tensor.

Why: a non-finite weight written into an output model does not fail loudly; it turns every
logit that touches it into NaN, usually much later, in someone else's evaluation. So every
weight layergraft writes is scanned, and a non-finite one stops the command with one line
naming the tensor and its file (the output is never renamed into place).

Why on raw bytes, with numpy: restore is pure byte copying and must stay as fast as ``cp``.
The writer already reads every copied byte once, to hash it; the scan runs on that same
buffer (no extra read pass, no torch, no decode). A float is NaN or ±Inf exactly when all its
exponent bits are set, so the test is on the exponent bits, per dtype:

* F32, F64: ``numpy.isfinite`` on the buffer viewed as ``<f4`` / ``<f8`` (that very test, in
  SIMD).
* F16, BF16 (exponent mask ``M`` = ``0x7C00`` / ``0x7F80``; numpy has no bfloat16): an element
  ``u`` is non-finite iff ``u & 0x7FFF >= M``. Positive ones are then the only ``int16`` values
  ``>= M``, negative ones the only ``uint16`` values ``>= 0x8000 | M``; so two reductions
  (``max`` of the buffer viewed as ``<i2`` and as ``<u2``) answer "any?" without writing a
  temporary array — about twice as fast as mask-and-compare.

Other dtypes (integers, float8, ...) are not scanned. numpy is imported on first use, so
importing this module costs nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from layergraft.errors import NonFiniteError

#: safetensors dtype -> (numpy dtype of one element, exponent mask; None: use isfinite)
_SCAN: dict[str, tuple[str, int | None]] = {
    "F16": ("<u2", 0x7C00),
    "BF16": ("<u2", 0x7F80),
    "F32": ("<f4", None),
    "F64": ("<f8", None),
}

SCANNED_DTYPES = frozenset(_SCAN)


def has_nonfinite(buf: Any, dtype: str) -> bool:
    """Whether the little-endian ``dtype`` elements in ``buf`` include a NaN or ±Inf
    (pure and thread-safe: the writer calls it from its hashing thread)."""
    spec = _SCAN.get(dtype)
    if spec is None:
        return False
    import numpy as np

    a = np.frombuffer(buf, dtype=spec[0])
    if a.size == 0:
        return False
    mask = spec[1]
    if mask is None:
        return not bool(np.isfinite(a).all())
    return int(a.view("<i2").max()) >= mask or int(a.max()) >= (0x8000 | mask)


def describe_nonfinite(buf: Any, dtype: str) -> str:
    """``"NaN"``, ``"Inf"`` or ``"NaN and Inf"``: what a buffer known to hold some has (slow path)."""
    import numpy as np

    elem, mask = _SCAN[dtype]
    a = np.frombuffer(buf, dtype=elem)
    if mask is None:
        nan, inf = bool(np.isnan(a).any()), bool(np.isinf(a).any())
    else:
        full = (a & a.dtype.type(mask)) == mask
        mantissa = a & a.dtype.type(~mask & 0x7FFF)
        nan = bool((full & (mantissa != 0)).any())
        inf = bool((full & (mantissa == 0)).any())
    return " and ".join(kind for flag, kind in ((nan, "NaN"), (inf, "Inf")) if flag)


def nonfinite_error(name: str, dtype: str, buf: Any, file: Path | None) -> NonFiniteError:
    """The one-line refusal for tensor ``name`` (from ``file``, or computed when None)."""
    what = describe_nonfinite(buf, dtype)
    if file is not None:
        return NonFiniteError(
            f"tensor {name!r} in {file} holds {what} values, which layergraft will not use or write; "
            f"repair or re-download {file.parent}"
        )
    return NonFiniteError(
        f"computed tensor {name!r} holds {what} values; check the inputs for non-finite weights "
        "(layergraft refuses to write them) and run again"
    )
