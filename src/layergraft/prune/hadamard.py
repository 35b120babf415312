"""Hadamard matrices for LinearPatch-R (``--recover rotate``), built, not tabulated.

Why a Hadamard rotation: a few channels of the residual stream carry huge activations. A
per-channel scale fitted in the raw basis is ruled by them; in a basis where every new channel
mixes all old ones with equal weight (``H/√d``, orthonormal) the energy is spread evenly, so a
per-channel scale there (LinearPatch-R: ``H·D·Hᵀ``) corrects the stream without following the
outliers.

Which orders: ``d = m · 2^k`` with ``H_m`` from one of

* Sylvester: ``m = 1`` (``H_{2n} = [[H, H], [H, −H]]``);
* Paley I: ``m = q + 1`` for a prime ``q ≡ 3 (mod 4)`` (12, 20, 24, 44, 48, 60, 68, 72, …);
* Paley II: ``m = 2(q + 1)`` for a prime ``q ≡ 1 (mod 4)`` (12, 28, 36, 60, 76, …);

and ``H_d = H_m ⊗ H_{2^k}``. This covers the hidden sizes of the families layergraft claims
(576 = 36·16, 640 = 20·32, 896 = 28·32, 960 = 60·16, 1152, 1536, 2048, 2304, 2560, 3072,
3584, 4096, 5120, 8192, …). QuaRot-style code ships fixed tables for a similar list of ``m``;
any Hadamard matrix of the right order is an equally valid LinearPatch-R basis, but results
differ slightly between two of them, so :func:`basis_name` records which one was used.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from layergraft.errors import InputError


def _is_prime(q: int) -> bool:
    if q < 2:
        return False
    f = 2
    while f * f <= q:
        if q % f == 0:
            return False
        f += 1
    return True


def _jacobsthal(q: int) -> Any:
    """``Q[i, j] = χ(j − i)`` over GF(q), q prime: χ the quadratic character (0 at 0)."""
    import numpy as np

    squares = {(x * x) % q for x in range(1, q)}
    chi = np.array([0] + [1 if a in squares else -1 for a in range(1, q)], dtype=np.int64)
    idx = (np.arange(q)[None, :] - np.arange(q)[:, None]) % q
    return chi[idx]


def _paley1(q: int) -> Any:
    """Order ``q + 1``, ``q ≡ 3 (mod 4)`` prime: ``H = I + S``, ``S = [[0, 1ᵀ], [−1, Q]]``."""
    import numpy as np

    n = q + 1
    s = np.zeros((n, n), dtype=np.int64)
    s[0, 1:] = 1
    s[1:, 0] = -1
    s[1:, 1:] = _jacobsthal(q)
    return np.eye(n, dtype=np.int64) + s


def _paley2(q: int) -> Any:
    """Order ``2(q + 1)``, ``q ≡ 1 (mod 4)`` prime: the symmetric conference matrix
    ``C = [[0, 1ᵀ], [1, Q]]`` with 0 → ``[[1, −1], [−1, −1]]`` and ±1 → ``±[[1, 1], [1, −1]]``."""
    import numpy as np

    n = q + 1
    c = np.zeros((n, n), dtype=np.int64)
    c[0, 1:] = 1
    c[1:, 0] = 1
    c[1:, 1:] = _jacobsthal(q)
    zero = np.array([[1, -1], [-1, -1]], dtype=np.int64)
    one = np.array([[1, 1], [1, -1]], dtype=np.int64)
    return np.kron(c, one) + np.kron((c == 0).astype(np.int64), zero)


def _core(m: int) -> Any | None:
    """``H_m`` for a core order ``m`` (1 or a Paley order), else None."""
    import numpy as np

    if m == 1:
        return np.array([[1]], dtype=np.int64)
    if m % 4:
        return None
    if _is_prime(m - 1) and (m - 1) % 4 == 3:
        return _paley1(m - 1)
    if m % 2 == 0 and _is_prime(m // 2 - 1) and (m // 2 - 1) % 4 == 1:
        return _paley2(m // 2 - 1)
    return None


def factor(n: int) -> tuple[int, int] | None:
    """``(m, 2^k)`` with ``n = m · 2^k`` and ``H_m`` constructible, the smallest such ``m``;
    None when no construction here gives order ``n``."""
    if n < 1:
        return None
    p = 1
    while n % (2 * p) == 0:
        p *= 2
    while p >= 1:  # the largest power of two first: the smallest core
        if _core(n // p) is not None:
            return n // p, p
        p //= 2
    return None


def basis_name(n: int) -> str:
    """How the order-``n`` matrix is built, e.g. ``hadamard 36x16 (paley2)``."""
    f = factor(n)
    if f is None:
        return "none"
    m, p = f
    kind = (
        "sylvester" if m == 1 else ("paley1" if _is_prime(m - 1) and (m - 1) % 4 == 3 else "paley2")
    )
    return f"hadamard {m}x{p} ({kind})"


@cache
def _hadamard_np(n: int) -> Any:
    import numpy as np

    f = factor(n)
    if f is None:
        raise InputError(
            f"no Hadamard matrix of order {n} can be built here (orders m·2^k, m = 1, 2, q+1 with a "
            "prime q ≡ 3 mod 4, or 2(q+1) with a prime q ≡ 1 mod 4); use --recover diag or ghost"
        )
    m, p = f
    h = _core(m)
    s = np.array([[1]], dtype=np.int64)
    while s.shape[0] < p:
        s = np.block([[s, s], [s, -s]])
    return np.kron(h, s)


def hadamard(n: int, *, device: Any = None) -> Any:
    """The orthonormal ``H/√n`` of order ``n`` as a float64 torch tensor (``H Hᵀ = I``)."""
    import torch

    h = torch.from_numpy(_hadamard_np(n)).to(torch.float64) / float(n) ** 0.5
    return h.to(device) if device is not None else h
