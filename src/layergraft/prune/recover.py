"""Recovery operators for a removed block ``[s, e)``, all closed-form in the same statistics.

With ``X = X_pre`` (residual stream entering layer ``s``), ``X_post`` (entering layer ``e``)
and ``Δ = X_post − X``, each method is a different answer to "what cheap map makes the
stream after the gap look like what layer ``e`` was trained on?":

* ``none``      — nothing (plain layer removal, ShortGPT-style).
* ``scale``     — one scalar ``α = sqrt(Σ‖x_post‖² / Σ‖x‖²)`` (Prune&Comp magnitude
  compensation). Folded into weights (where and why: :mod:`layergraft.prune.fold`): a standard
  checkpoint.
* ``diag``      — a per-channel ratio ``r_c = sqrt(Σ x_post,c² / Σ x_c²)`` (LinearPatch-D).
  Not foldable (a per-channel scale does not commute with RMSNorm): a ghost module.
* ``replaceme`` — ReplaceMe: ``T = argmin ‖M T − (Δ + M)‖²`` on the MLP output ``M`` of layer
  ``s − 1``, folded into that layer's MLP output projection: a standard checkpoint.
* ``ghost``     — the default: ``W = I + M*``, ``M* = argmin ‖X M − Δ‖² + λ‖M‖²`` (+ optional
  bias), a general d×d map on the residual stream; a ghost module.

Solves are float64 Cholesky on the damped Gram (``torch.linalg.lstsq`` of the damped system
if Cholesky fails); never an explicit inverse. ``λ = damp · trace(XᵀX) / d`` so that one
``damp`` means the same thing for every model scale.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass
from typing import Any, Literal

from layergraft.errors import ArchitectureError, InputError
from layergraft.prune.calibrate import GapStats
from layergraft.text import MIN_TOKENS

log = logging.getLogger(__name__)

Method = Literal["none", "scale", "diag", "replaceme", "ghost"]
METHODS: tuple[str, ...] = ("ghost", "replaceme", "diag", "scale", "none")
#: methods whose saved model needs a ghost module on load (the others are standard checkpoints)
NEEDS_GHOST: frozenset[str] = frozenset({"ghost", "diag"})
DEFAULT_DAMP = 1e-4


class FewTokensWarning(UserWarning):
    """Fewer calibration tokens than hidden channels: the fit leans on the damping."""


@dataclass
class Operator:
    """A fitted operator for gap ``[start, end)``.

    ``kind`` is ``none`` / ``scale`` (``scale`` scalar) / ``diag`` (``scale`` vector) /
    ``full`` (``delta`` d×d, applied as ``h + h·delta + bias``) / ``replaceme``
    (``delta`` = the d×d map ``T`` folded into layer ``start − 1``'s MLP output).
    Tensors are float64 on the device of the statistics.
    """

    method: str
    start: int
    end: int
    kind: str
    delta: Any = None
    bias: Any = None
    scale: Any = None
    n_tokens: int = 0
    damp: float = 0.0
    #: ghost only: ``‖X M* (+ b) − Δ‖² / ‖Δ‖²`` on the calibration samples (the part of the
    #: removed layers' contribution the linear map cannot reproduce) and ``‖Δ‖²`` itself
    residual: float | None = None
    delta_sq: float | None = None

    @property
    def is_ghost(self) -> bool:
        return self.kind in ("full", "diag")

    def n_params(self) -> int:
        """Extra parameters the saved model carries for this operator (folded ones add none)."""
        if self.kind == "full":
            return int(self.delta.numel() + (self.bias.numel() if self.bias is not None else 0))
        if self.kind == "diag":
            return int(self.scale.numel())
        return 0

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "method": self.method,
            "range": f"{self.start}:{self.end}",
            "kind": self.kind,
            "n_tokens": self.n_tokens,
            "extra_params": self.n_params(),
        }
        if self.kind == "scale":
            out["scale"] = float(self.scale)
        if self.method in ("ghost", "replaceme"):
            out["damp"] = self.damp
            out["bias"] = self.bias is not None
        if self.residual is not None:
            out["residual"] = self.residual
            out["delta_sq"] = self.delta_sq
        return out


# ---- linear algebra --------------------------------------------------------------------------
def solve_psd(a: Any, b: Any) -> Any:
    """Solve ``a x = b`` for symmetric positive (semi)definite ``a`` (float64).

    Cholesky first (fast, stable for a damped Gram); ``lstsq`` when ``a`` is singular
    (``damp = 0`` with fewer tokens than channels): the minimum-norm least-squares solution.
    """
    import torch

    chol, info = torch.linalg.cholesky_ex(a)
    if int(info) == 0:
        return torch.cholesky_solve(b, chol)
    log.info("Gram matrix not positive definite; solving by least squares")
    driver = "gelsd" if a.device.type == "cpu" else None
    return torch.linalg.lstsq(a, b, driver=driver).solution


def normalised_residual(gram: Any, rhs: Any, sol: Any, delta_sq: float) -> float:
    """``‖A·sol − Δ‖² / ‖Δ‖²`` from second moments only: ``gram = AᵀA`` (undamped),
    ``rhs = AᵀΔ``, ``delta_sq = ‖Δ‖²``, since ``‖A S − Δ‖² = tr(SᵀAᵀA S) − 2 tr(SᵀAᵀΔ) + ‖Δ‖²``.

    Why the Grams suffice: selection by residual must not keep the ``n × d`` activations; the
    streamed statistics of the fit hold everything the residual needs. A block whose layers
    change nothing (``‖Δ‖² = 0``) has nothing to repair: 0. Rounding can leave the difference
    a hair below 0; it is clamped.
    """
    if delta_sq <= 0:
        return 0.0
    fitted = float((sol * (gram @ sol)).sum()) - 2.0 * float((sol * rhs).sum())
    return max(fitted + delta_sq, 0.0) / delta_sq


def check_damp(damp: float | None) -> float:
    """``damp`` as given (None: :data:`DEFAULT_DAMP`), refusing a negative or non-finite one
    (NaN compares false with 0, and would reach ``torch.linalg.lstsq``)."""
    d = DEFAULT_DAMP if damp is None else float(damp)
    if not math.isfinite(d) or d < 0:
        raise InputError(f"--damp must be a finite number >= 0 (got {d}); give e.g. 1e-4")
    return d


def damping(xtx: Any, damp: float) -> float:
    """``λ = damp · trace(XᵀX) / d``: relative to the mean channel energy, so it is scale-free."""
    return float(damp) * float(xtx.diagonal().sum()) / xtx.shape[0]


def check_tokens(stats: GapStats, what: str, damp: float | None = None) -> None:
    """Refuse gaps with (almost) no data; warn when tokens < hidden size (rank-deficient Gram).

    With ``damp == 0`` (a d×d solve without ridge) fewer tokens than channels is refused
    instead: the Gram is singular, so the fit would be an arbitrary point of a solution space
    (lstsq's minimum-norm one), not an estimate — the user must give data or damping.
    """
    if stats.n < MIN_TOKENS:
        raise InputError(
            f"only {stats.n} calibration tokens reached gap {stats.start}:{stats.end}; "
            f"{what} needs at least {MIN_TOKENS} — raise --calib-tokens or give a longer --calib file"
        )
    if stats.n < stats.d and damp == 0:
        raise InputError(
            f"only {stats.n} calibration tokens at gap {stats.start}:{stats.end}, fewer than the hidden size {stats.d}, "
            f"and --damp 0: the {what} fit is underdetermined; raise --calib-tokens (give more text) or pass --damp > 0, e.g. 1e-4"
        )
    if stats.n < stats.d:
        warnings.warn(
            f"{stats.n} calibration tokens < hidden size {stats.d} at gap {stats.start}:{stats.end}: "
            f"the {what} fit is underdetermined and relies on damping; use more --calib-tokens",
            FewTokensWarning,
            stacklevel=3,
        )


# ---- fits ------------------------------------------------------------------------------------
def fit_ghost(stats: GapStats, damp: float = DEFAULT_DAMP, bias: bool = False) -> Operator:
    """``M* = argmin ‖X M (+ 1 bᵀ) − Δ‖² + λ‖M‖²`` (the bias is not damped), with the fit's
    :func:`normalised_residual` on the calibration samples."""
    import torch

    check_tokens(stats, "ghost", damp)
    d = stats.d
    lam = damping(stats.xtx, damp)
    eye = torch.eye(d, dtype=torch.float64, device=stats.xtx.device)
    if bias:
        g = torch.zeros(d + 1, d + 1, dtype=torch.float64, device=stats.xtx.device)
        g[:d, :d] = stats.xtx
        g[:d, d] = stats.sx
        g[d, :d] = stats.sx
        g[d, d] = stats.n
        r = torch.cat([stats.xtd, stats.sd[None, :]], 0)
        damped = g.clone()
        damped[:d, :d] += lam * eye
        sol = solve_psd(damped, r)
        m, b = sol[:d], sol[d]
    else:
        g, r = stats.xtx, stats.xtd
        sol = m = solve_psd(g + lam * eye, r)
        b = None
    delta_sq = float(stats.dd.sum())
    return Operator(
        "ghost", stats.start, stats.end, "full", delta=m, bias=b, n_tokens=stats.n, damp=damp,
        residual=normalised_residual(g, r, sol, delta_sq), delta_sq=delta_sq,
    )  # fmt: skip


def fit_diag(stats: GapStats) -> Operator:
    """Per-channel magnitude ratio ``sqrt(Σ x_post,c² / Σ x_c²)`` (channels with no energy: 1)."""
    import torch

    check_tokens(stats, "diag")
    pre, post = stats.xx, stats.post_sq.clamp(min=0)
    r = torch.where(pre > 0, (post / pre.clamp(min=1e-300)).sqrt(), torch.ones_like(pre))
    return Operator("diag", stats.start, stats.end, "diag", scale=r, n_tokens=stats.n)


def fit_scale(stats: GapStats) -> Operator:
    """One scalar: the ratio of total magnitudes ``sqrt(Σ‖x_post‖² / Σ‖x‖²)``."""
    check_tokens(stats, "scale")
    pre = float(stats.xx.sum())
    post = float(stats.post_sq.clamp(min=0).sum())
    alpha = (post / pre) ** 0.5 if pre > 0 else 1.0
    return Operator("scale", stats.start, stats.end, "scale", scale=alpha, n_tokens=stats.n)


def fit_replaceme(stats: GapStats, damp: float = DEFAULT_DAMP) -> Operator:
    """``T* = argmin ‖M T − (Δ + M)‖² + λ‖T − I‖²`` on the MLP output ``M`` of layer ``s − 1``.

    Damping pulls towards the identity (= no change to the layer), not towards zero, so a
    weakly determined fit degrades to plain removal instead of erasing the MLP.
    """
    import torch

    if stats.start == 0 or stats.mtm is None:
        raise ArchitectureError(
            f"replaceme folds into the MLP of the layer before the gap, and gap {stats.start}:{stats.end} "
            "has none; keep layer 0 or use --recover ghost"
        )
    check_tokens(stats, "replaceme", damp)
    d = stats.d
    lam = damping(stats.mtm, damp)
    eye = torch.eye(d, dtype=torch.float64, device=stats.mtm.device)
    t = solve_psd(stats.mtm + lam * eye, stats.mtt + lam * eye)
    return Operator(
        "replaceme", stats.start, stats.end, "replaceme", delta=t, n_tokens=stats.n, damp=damp
    )


def fit(
    method: str, stats: GapStats, *, damp: float = DEFAULT_DAMP, bias: bool = False
) -> Operator:
    """Dispatch on ``method`` (one of :data:`METHODS`)."""
    if method == "ghost":
        return fit_ghost(stats, damp, bias)
    if method == "diag":
        return fit_diag(stats)
    if method == "scale":
        return fit_scale(stats)
    if method == "replaceme":
        return fit_replaceme(stats, damp)
    if method == "none":
        return Operator("none", stats.start, stats.end, "none", n_tokens=stats.n)
    raise InputError(f"unknown recovery method {method!r}; choose one of {', '.join(METHODS)}")
