"""Recovery operators for a removed block ``[s, e)``, all closed-form in the same statistics.

With ``X = X_pre`` (residual stream entering layer ``s``), ``X_post`` (entering layer ``e``)
and ``Δ = X_post − X``, each method is a different answer to "what cheap map makes the
stream after the gap look like what layer ``e`` was trained on?":

* ``none``      — nothing (plain layer removal, ShortGPT-style).
* ``scale``     — one scalar ``α = sqrt(Σ‖x_post‖² / Σ‖x‖²)`` (Prune&Comp magnitude
  compensation). Folded into weights (where and why: :func:`fold_scale`): a standard
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
import warnings
from dataclasses import dataclass
from typing import Any, Literal

from layergraft.calibrate import MIN_TOKENS, GapStats
from layergraft.errors import ArchitectureError, InputError

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
    """``M* = argmin ‖X M (+ 1 bᵀ) − Δ‖² + λ‖M‖²`` (the bias is not damped)."""
    import torch

    check_tokens(stats, "ghost", damp)
    d = stats.d
    lam = damping(stats.xtx, damp)
    if bias:
        g = torch.zeros(d + 1, d + 1, dtype=torch.float64, device=stats.xtx.device)
        g[:d, :d] = stats.xtx
        g[:d, d] = stats.sx
        g[d, :d] = stats.sx
        g[d, d] = stats.n
        g[:d, :d] += lam * torch.eye(d, dtype=torch.float64, device=g.device)
        r = torch.cat([stats.xtd, stats.sd[None, :]], 0)
        sol = solve_psd(g, r)
        m, b = sol[:d], sol[d]
    else:
        g = stats.xtx + lam * torch.eye(d, dtype=torch.float64, device=stats.xtx.device)
        m, b = solve_psd(g, stats.xtd), None
    return Operator(
        "ghost", stats.start, stats.end, "full", delta=m, bias=b, n_tokens=stats.n, damp=damp
    )


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


# ---- folding (standard-checkpoint methods) ---------------------------------------------------
#: attention output projections, relative to the attention module (first one present wins).
#: TODO(arch): belongs in FamilySpec as ``attn_out``; kept here because arch/ is not ours.
_ATTN_OUT = ("o_proj", "c_proj", "dense", "out_proj")


def residual_writers(adapter: Any, model: Any, i: int) -> list[tuple[Any, str]]:
    """The modules whose output layer ``i`` adds to the residual stream, as ``(module, how)``:
    ``linear`` (scale weight and bias), or ``norm`` / ``norm1p`` for post-norm families
    (Gemma-2/3, OLMo-2) whose sublayer outputs pass through a norm before the add (``norm1p``:
    Gemma's ``(1 + w)`` parameterisation)."""
    layer = adapter.layers(model)[i]
    post = [
        getattr(layer, n, None) for n in ("post_attention_layernorm", "post_feedforward_layernorm")
    ]
    if post[1] is not None and post[0] is not None:
        how = "norm1p" if "Gemma" in type(post[0]).__name__ else "norm"
        return [(post[0], how), (post[1], how)]
    attn = adapter._get(model, adapter.attn_path(i))
    outs = [getattr(attn, n) for n in _ATTN_OUT if hasattr(attn, n)]
    if not outs:
        raise ArchitectureError(
            f"cannot find the attention output projection of a {adapter.family} layer for scale folding; "
            "use --recover ghost or diag"
        )
    return [(outs[0], "linear"), (adapter._get(model, adapter.mlp_out_proj(i)), "linear")]


def scale_writers(adapter: Any, model: Any, i: int, c: float) -> list[Any]:
    """Multiply layer ``i``'s contributions to the residual stream by ``c`` in place; returns
    the parameters changed."""
    import torch

    from layergraft.offload import refuse_offloaded

    changed = []
    writers = residual_writers(adapter, model, i)
    refuse_offloaded([m.weight for m, _ in writers], f"layer {i}'s residual output")
    with torch.no_grad():
        for mod, how in writers:
            if how == "norm1p":
                mod.weight.copy_((1 + mod.weight.double()) * c - 1)
                changed.append(mod.weight)
            else:
                mod.weight.mul_(c)
                changed.append(mod.weight)
                if getattr(mod, "bias", None) is not None:
                    mod.bias.mul_(c)
                    changed.append(mod.bias)
    return changed


def fold_scale(adapter: Any, model: Any, ops: list[Operator], keep: list[int]) -> None:
    """Fold each gap's scalar ``α`` into the *pruned* model (layers already cut to ``keep``).

    Where: the compensated stream after a gap is ``α·x_pre + (later contributions)``. Every
    later layer reads the stream through a scale-invariant norm (RMSNorm/LayerNorm), and so
    does the final norm, so dividing the whole downstream stream by ``α`` changes nothing but
    the norms' ``eps``: ``x_pre + (later contributions)/α``. Hence the fold: the residual
    writers (attention output projection and MLP output projection, weights and biases; the
    post-norm weights in Gemma-2/3 and OLMo-2) of **every kept layer after the gap** are
    multiplied by ``1/α`` (by the product of ``1/α`` over all earlier gaps when pruning is
    scattered). Embeddings and the head are untouched, so tied weights stay tied. Exact up to
    the norms' ``eps``.
    """
    factor = 1.0
    for new_i, old_i in enumerate(keep):
        for op in ops:
            if op.kind == "scale" and op.end == old_i:
                factor /= float(op.scale)
        if factor != 1.0:
            scale_writers(adapter, model, new_i, factor)


def fold_replaceme(adapter: Any, model: Any, op: Operator, new_index: int) -> list[Any]:
    """Fold ``T`` into the MLP output projection of (new) layer ``new_index`` = old ``s − 1``.

    ``y = x Wᵀ + b`` becomes ``y T = x (Tᵀ W)ᵀ + b T``: ``W ← Tᵀ W``, ``b ← b T``; for GPT-2's
    Conv1D (``y = x W + b``, weight ``[in, out]``) ``W ← W T``. Computed in float64, stored in
    the weight's dtype.
    """
    import torch

    layer = adapter.layers(model)[new_index]
    if getattr(layer, "post_feedforward_layernorm", None) is not None:
        raise ArchitectureError(
            f"{adapter.family} normalises the MLP output before adding it to the residual, so ReplaceMe "
            "cannot be folded into its down projection; use --recover ghost"
        )
    from layergraft.offload import refuse_offloaded

    mod = adapter._get(model, adapter.mlp_out_proj(new_index))
    refuse_offloaded([mod.weight], f"the MLP output projection of layer {new_index}")
    t = op.delta.to(device=mod.weight.device)
    with torch.no_grad():
        w = mod.weight.double()
        w = w @ t if adapter.mlp_out_transposed else t.T @ w
        mod.weight.copy_(w.to(mod.weight.dtype))
        if getattr(mod, "bias", None) is not None:
            mod.bias.copy_((mod.bias.double() @ t).to(mod.bias.dtype))
    return [mod.weight] + ([mod.bias] if getattr(mod, "bias", None) is not None else [])
