"""Recovery operators for a removed block ``[s, e)``, all closed-form in the same statistics.

With ``X = X_pre`` (residual stream entering layer ``s``), ``X_post`` (entering layer ``e``)
and ``Δ = X_post − X``, each method is a different answer to "what cheap map makes the
stream after the gap look like what layer ``e`` was trained on?":

* ``none``      — nothing (plain layer removal, ShortGPT-style).
* ``scale``     — one scalar ``α = sqrt(Σ‖x_post‖² / Σ‖x‖²)`` (Prune&Comp magnitude
  compensation). Folded into weights (where and why: :mod:`layergraft.prune.fold`): a standard
  checkpoint.
* ``diag``      — LinearPatch-D: a per-channel ratio of mean magnitudes
  ``r_c = Σ|x_post,c| / Σ|x_c|``, as LinearPatch's ``get_scale_params`` defines it (ratios of
  mean absolute values, not of RMS: an RMS ratio follows the few massive activations). Not
  foldable (a per-channel scale does not commute with RMSNorm): a ghost module.
* ``rotate``    — LinearPatch-R: the same ratio in a Hadamard basis ``H``
  (:mod:`layergraft.prune.hadamard`), ``D_c = Σ|(x_post H)_c| / Σ|(x H)_c|``, applied as the
  symmetric d×d map ``H D Hᵀ``. Not foldable either (it is not orthogonal, so it cannot be
  pushed through the norms into the next layers' weights): a ghost module of the full kind.
* ``replaceme`` — ReplaceMe: ``T = argmin ‖M T − (Δ + M)‖²`` on the MLP output ``M`` of layer
  ``s − 1``, folded into that layer's MLP output projection: a standard checkpoint.
* ``ghost``     — the default: ``W = I + M*``, ``M* = argmin ‖X M − Δ‖² + λ‖M‖²`` (+ optional
  bias), a general d×d map on the residual stream; a ghost module.

Solves are float64 Cholesky on the damped Gram (``torch.linalg.lstsq`` of the damped system
if Cholesky fails); never an explicit inverse. The ridge is a :class:`Damp`: by default
relative, ``λ = damp · trace(XᵀX) / d``, so that one ``damp`` means the same thing for every
model scale and calibration size; ``Damp(1e-6, absolute=True)`` (``--damp-abs 1e-6``) is the
Ghosted Layers paper's and official code's ``XᵀX + 1e-6·I``.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass
from typing import Any, Literal

from layergraft.errors import ArchitectureError, InputError
from layergraft.prune.calibrate import GapStats
from layergraft.prune.hadamard import basis_name, factor, hadamard
from layergraft.text import MIN_TOKENS

log = logging.getLogger(__name__)

Method = Literal["none", "scale", "diag", "rotate", "replaceme", "ghost"]
METHODS: tuple[str, ...] = ("ghost", "replaceme", "rotate", "diag", "scale", "none")
#: methods whose saved model needs a ghost module on load (the others are standard checkpoints)
NEEDS_GHOST: frozenset[str] = frozenset({"ghost", "rotate", "diag"})
DEFAULT_DAMP = 1e-4
#: the Ghosted Layers paper's absolute ridge (``XᵀX + 1e-6·I``)
PAPER_DAMP_ABS = 1e-6


@dataclass(frozen=True)
class Damp:
    """The ridge of a closed-form fit: ``λ = value · trace(G) / d`` (relative, the default)
    or ``λ = value`` (``absolute``, as the Ghosted Layers paper).

    Why relative by default: an absolute ``1e-6`` is negligible against the Gram of a
    large model (trace in the millions) and decisive for a tiny one, and it changes meaning
    with the number of calibration tokens; a relative ridge is the same regularisation at
    every scale. Why the absolute one exists: to reproduce the paper's operator exactly.
    """

    value: float = DEFAULT_DAMP
    absolute: bool = False

    def lam(self, gram: Any) -> float:
        if self.absolute:
            return float(self.value)
        return float(self.value) * float(gram.diagonal().sum()) / gram.shape[0]

    def as_json(self) -> dict[str, Any]:
        return {"damp": self.value, "damp_mode": "absolute" if self.absolute else "relative"}

    def flag(self) -> str:
        return f"--damp-abs {self.value:g}" if self.absolute else f"--damp {self.value:g}"


def as_damp(damp: Damp | float | None) -> Damp:
    """A :class:`Damp` from what callers pass: a Damp, a relative float, or None (default)."""
    if isinstance(damp, Damp):
        return damp
    return Damp(DEFAULT_DAMP if damp is None else float(damp))


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
    damp: Damp | None = None
    #: rotate only: how the Hadamard basis was built (:func:`~layergraft.prune.hadamard.basis_name`)
    basis: str | None = None
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
        if self.method in ("ghost", "replaceme") and self.damp is not None:
            out.update(self.damp.as_json())
            out["bias"] = self.bias is not None
        if self.basis is not None:
            out["basis"] = self.basis
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


def check_damp(damp: float | Damp | None, damp_abs: float | None = None) -> Damp:
    """The ridge from ``--damp`` (relative) or ``--damp-abs`` (absolute), refusing both at
    once and a negative or non-finite value (NaN compares false with 0, and would reach
    ``torch.linalg.lstsq``). Neither given: relative :data:`DEFAULT_DAMP`."""
    if isinstance(damp, Damp):
        if damp_abs is not None:
            raise InputError("give the damping once (a Damp, or damp_abs)")
        damp, damp_abs = (None, damp.value) if damp.absolute else (damp.value, None)
    if damp is not None and damp_abs is not None:
        raise InputError(
            f"--damp {damp} (relative) and --damp-abs {damp_abs} (absolute) both set the ridge; give one"
        )
    absolute = damp_abs is not None
    d = float(damp_abs if absolute else (DEFAULT_DAMP if damp is None else damp))
    if not math.isfinite(d) or d < 0:
        flag = "--damp-abs" if absolute else "--damp"
        raise InputError(
            f"{flag} must be a finite number >= 0 (got {d}); give e.g. {'1e-6' if absolute else '1e-4'}"
        )
    return Damp(d, absolute)


def damping(xtx: Any, damp: Damp | float) -> float:
    """The ridge ``λ`` for Gram ``xtx``: :meth:`Damp.lam` (a float is a relative damp)."""
    return as_damp(damp).lam(xtx)


def check_tokens(stats: GapStats, what: str, damp: Damp | float | None = None) -> None:
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
    if stats.n < stats.d and damp is not None and as_damp(damp).value == 0:
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
def fit_ghost(stats: GapStats, damp: Damp | float = DEFAULT_DAMP, bias: bool = False) -> Operator:
    """``M* = argmin ‖X M (+ 1 bᵀ) − Δ‖² + λ‖M‖²`` (the bias is not damped), with the fit's
    :func:`normalised_residual` on the calibration samples."""
    import torch

    damp = as_damp(damp)
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


def _ratio(post: Any, pre: Any) -> Any:
    """``post / pre`` per channel; 1 where the channel has no magnitude before the gap."""
    import torch

    return torch.where(pre > 0, post / pre.clamp(min=1e-300), torch.ones_like(pre))


def fit_diag(stats: GapStats) -> Operator:
    """LinearPatch-D: per channel ``Σ|x_post,c| / Σ|x_c|`` (channels with no magnitude: 1).

    LinearPatch's own code averages per-batch ratios of means; with equal batches that is
    close to this ratio of sums, which does not depend on how the tokens were batched (the
    Ghosted Layers code divides that average by a fixed 128 batches whatever their number,
    shrinking every scale when fewer are used: not reproduced)."""
    check_tokens(stats, "diag")
    r = _ratio(stats.ap, stats.ax)
    return Operator("diag", stats.start, stats.end, "diag", scale=r, n_tokens=stats.n)


def fit_rotate(stats: GapStats) -> Operator:
    """LinearPatch-R: ``W = H D Hᵀ`` with ``D_c = Σ|(x_post H)_c| / Σ|(x H)_c|``, stored as the
    full operator ``W − I`` (so it loads as every d×d ghost does). Needs the statistics
    collected with :func:`rotation_for` (``GapStats.rotation``)."""
    check_tokens(stats, "rotate")
    if stats.rotation is None or stats.rax is None:
        raise ValueError("rotate needs statistics collected with the Hadamard rotation")
    h = stats.rotation.to(stats.rax.device)
    dvec = _ratio(stats.rap, stats.rax)
    w = (h * dvec[None, :]) @ h.T
    w.diagonal().sub_(1.0)
    return Operator(
        "rotate", stats.start, stats.end, "full", delta=w, scale=dvec, n_tokens=stats.n,
        basis=basis_name(stats.d),
    )  # fmt: skip


def check_rotate(d: int) -> None:
    """Refuse ``rotate`` for a hidden size with no Hadamard matrix here (from the config,
    before any model loads)."""
    if factor(d) is None:
        raise InputError(
            f"--recover rotate needs a Hadamard matrix of the hidden size {d}, and none can be built "
            "(orders m·2^k, m = 1, q+1 with a prime q ≡ 3 mod 4, or 2(q+1) with a prime q ≡ 1 mod 4); "
            "use --recover diag or ghost"
        )


def rotation_for(methods: Any, d: int, device: Any = None) -> Any:
    """The Hadamard basis to collect statistics in when ``methods`` include ``rotate``."""
    return hadamard(d, device=device) if "rotate" in set(methods) else None


def fit_scale(stats: GapStats) -> Operator:
    """One scalar: the ratio of total magnitudes ``sqrt(Σ‖x_post‖² / Σ‖x‖²)``."""
    check_tokens(stats, "scale")
    pre = float(stats.xx.sum())
    post = float(stats.post_sq.clamp(min=0).sum())
    alpha = (post / pre) ** 0.5 if pre > 0 else 1.0
    return Operator("scale", stats.start, stats.end, "scale", scale=alpha, n_tokens=stats.n)


def fit_replaceme(stats: GapStats, damp: Damp | float = DEFAULT_DAMP) -> Operator:
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
    damp = as_damp(damp)
    check_tokens(stats, "replaceme", damp)
    d = stats.d
    lam = damping(stats.mtm, damp)
    eye = torch.eye(d, dtype=torch.float64, device=stats.mtm.device)
    t = solve_psd(stats.mtm + lam * eye, stats.mtt + lam * eye)
    return Operator(
        "replaceme", stats.start, stats.end, "replaceme", delta=t, n_tokens=stats.n, damp=damp
    )


def fit(
    method: str, stats: GapStats, *, damp: Damp | float = DEFAULT_DAMP, bias: bool = False
) -> Operator:
    """Dispatch on ``method`` (one of :data:`METHODS`)."""
    if method == "ghost":
        return fit_ghost(stats, damp, bias)
    if method == "diag":
        return fit_diag(stats)
    if method == "rotate":
        return fit_rotate(stats)
    if method == "scale":
        return fit_scale(stats)
    if method == "replaceme":
        return fit_replaceme(stats, damp)
    if method == "none":
        return Operator("none", stats.start, stats.end, "none", n_tokens=stats.n)
    raise InputError(f"unknown recovery method {method!r}; choose one of {', '.join(METHODS)}")
