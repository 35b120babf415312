"""Calibration: hooks at the layer boundaries we need, and streaming float64 Gram statistics.

Why streaming Grams: every recovery operator of :mod:`layergraft.prune.recover` is a
closed-form function of a few second moments of the residual stream at a gap (``XᵀX``,
``XᵀΔ``, column sums). Accumulating them batch by batch keeps memory at O(d²) however many
calibration tokens are used, instead of stacking an ``n × d`` activation matrix.

Why float64 and masking: the Gram of tens of thousands of tokens loses digits in float32
(and far more in bfloat16), and padding positions are not text — they must not pull the fit.

Why hooks that stop the forward pass: only the residual stream entering a few layers is
needed; a private exception raised by the hook of the last point needed skips the remaining
layers, the final norm and the (often huge) lm_head.

Boundary convention: boundary ``b`` is the residual stream *entering* decoder layer ``b``
(raw, before the layer's norm); boundary ``L`` (the layer count) is the output of the last
layer, before the final norm. A removed block ``[s, e)`` has ``X_pre`` = boundary ``s`` and
``X_post`` = boundary ``e``. On a pruned model a ghost operator sits on the stream entering the
first kept layer after its gap: ``("in", b)`` sees the stream after the ghost, ``("raw", b)``
the stream before it (what a fit of the gap *widened* by layer ``b`` starts from).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from layergraft.models.batching import position_ids
from layergraft.text import Batch

#: a capture point: ("in", b) = residual entering layer b (b == L: after the last layer);
#: ("raw", b) = the same before any ghost operator at b (b < L); ("mlp", i) = output of layer
#: i's MLP output projection (ReplaceMe's fold target)
Point = tuple[str, int]


class _Stop(Exception):
    """Raised by the hook that captured the last point needed: ends the forward pass early."""


# ---- hooks -----------------------------------------------------------------------------------
def _hidden_of(args: tuple, kwargs: dict) -> Any:
    return args[0] if args else kwargs["hidden_states"]


def _output_of(out: Any) -> Any:
    # transformers 5 decoder layers return a tensor; older ones (and GPT-2 blocks) a tuple
    return out[0] if isinstance(out, (tuple, list)) else out


@contextlib.contextmanager
def capture(
    model: Any, adapter: Any, points: Iterable[Point], sink: Callable[[Point, Any], None]
) -> Iterator[None]:
    """Hooks that call ``sink(point, tensor)`` at each point, and stop the forward pass (by
    raising :class:`_Stop`) as soon as every point of this pass has been seen.

    Use with :func:`forward_until`, which catches the stop.
    """
    layers = adapter.layers(model)
    n = len(layers)
    wanted = set(points)
    seen: set[Point] = set()
    handles = []

    def note(p: Point, t: Any) -> None:
        sink(p, t)
        seen.add(p)
        if seen >= wanted:
            raise _Stop

    for kind, i in sorted(wanted):
        if kind == "in" and i < n:
            handles.append(
                layers[i].register_forward_pre_hook(
                    lambda _m, a, kw, p=(kind, i): note(p, _hidden_of(a, kw)), with_kwargs=True
                )
            )
        elif kind == "raw" and i < n:  # prepended: runs before a ghost's pre-hook on layer i
            handles.append(
                layers[i].register_forward_pre_hook(
                    lambda _m, a, kw, p=(kind, i): note(p, _hidden_of(a, kw)),
                    with_kwargs=True,
                    prepend=True,
                )
            )
        elif kind == "in" and i == n:
            handles.append(
                layers[n - 1].register_forward_hook(
                    lambda _m, _a, out, p=(kind, i): note(p, _output_of(out))
                )
            )
        elif kind == "mlp" and 0 <= i < n:
            mod = adapter._get(model, adapter.mlp_out_proj(i))
            handles.append(
                mod.register_forward_hook(lambda _m, _a, out, p=(kind, i): note(p, _output_of(out)))
            )
        else:
            raise ValueError(f"no capture point {kind}:{i} in a {n}-layer model")
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def forward_until(model: Any, batch: Batch) -> None:
    """Run the model on ``batch`` (no cache, padding-aware positions) until a hook stops it."""
    import torch

    dev = next(model.parameters()).device
    ids = batch.input_ids.to(dev)
    mask = batch.attention_mask.to(dev)
    with torch.no_grad(), contextlib.suppress(_Stop):
        model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), use_cache=False)


def run_points(model: Any, adapter: Any, batch: Batch, points: Iterable[Point]) -> dict[Point, Any]:
    """The tensors at ``points`` for one batch (each on the device its layer lives on)."""
    got: dict[Point, Any] = {}
    with capture(model, adapter, points, lambda p, t: got.__setitem__(p, t.detach())):
        forward_until(model, batch)
    missing = set(points) - set(got)
    if missing:  # pragma: no cover - a model that skips layers
        raise RuntimeError(f"forward pass never reached {sorted(missing)}")
    return got


# ---- statistics ------------------------------------------------------------------------------
TOKENS: tuple[str, ...] = ("all", "last")


def sample_mask(mask: Any, tokens: str = "all") -> Any:
    """The positions that are samples: every real token (``all``), or each row's last real
    token (``last``, one sample per row, as Gromov et al.'s angular distance)."""
    import torch

    if tokens == "all":
        return mask
    if tokens != "last":
        raise ValueError(f"unknown tokens {tokens!r}")
    keep = torch.zeros_like(mask)
    last = mask.long().cumsum(-1).argmax(-1)  # the last position holding a real token
    keep[torch.arange(mask.shape[0], device=mask.device), last] = 1
    return keep * mask


def masked_rows(t: Any, mask: Any) -> Any:
    """The real-token rows of a ``[batch, seq, d]`` tensor as ``[n, d]`` float64 (on t's device)."""
    import torch

    keep = mask.to(t.device).bool()
    return t[keep].to(torch.float64)


@dataclass
class GapStats:
    """Running second moments for one gap ``[s, e)``, all float64 on the boundary's device.

    ``xtx = XᵀX``, ``xtd = XᵀΔ`` with ``X = X_pre`` and ``Δ = X_post − X_pre``; ``sx``, ``sd``
    are column sums (for the optional bias); ``dd`` and ``xx`` are per-channel sums of squares
    of ``Δ`` and ``X`` (the magnitude operators need only these). With ``mlp`` (ReplaceMe),
    ``mtm = MᵀM`` and ``mtt = Mᵀ(Δ + M)`` for the MLP output ``M`` of layer ``s − 1``.
    With ``weighted``, ``wxtx``, ``wxtd`` and ``wdd`` are ``XᵀX``, ``XᵀΔ`` and ``Σ‖Δ‖²`` with
    each token weighted by ``1 / ‖x_post‖²``: the second moments of every token's error relative
    to its own stream (selection by residual per token, :mod:`layergraft.prune.residual`).
    ``ax`` and ``ap`` are per-channel sums of ``|x|`` and ``|x_post|`` (LinearPatch-D's mean
    magnitudes; not functions of the second moments, so accumulated beside them). With a
    ``rotation`` ``R`` (d×d, LinearPatch-R's Hadamard), ``rax`` and ``rap`` are the same sums in
    the rotated basis, ``|X R|`` and ``|X_post R|``.
    """

    start: int
    end: int
    n: int = 0
    xtx: Any = None
    xtd: Any = None
    sx: Any = None
    sd: Any = None
    dd: Any = None
    mtm: Any = None
    mtt: Any = None
    extra: dict[str, Any] = field(default_factory=dict)
    weighted: bool = False
    wxtx: Any = None
    wxtd: Any = None
    wdd: float = 0.0
    ax: Any = None
    ap: Any = None
    rotation: Any = None
    rax: Any = None
    rap: Any = None

    @property
    def d(self) -> int:
        return int(self.xtx.shape[0])

    def update(self, x: Any, post: Any, mask: Any, mlp: Any = None) -> None:
        """Add one batch: ``x``/``post`` are ``[batch, seq, d]`` boundary states."""
        X = masked_rows(x, mask)
        D = masked_rows(post.to(x.device), mask) - X
        if self.xtx is None:
            import torch

            d = X.shape[1]
            z = lambda *s: torch.zeros(*s, dtype=torch.float64, device=X.device)  # noqa: E731
            self.xtx, self.xtd, self.sx, self.sd, self.dd = z(d, d), z(d, d), z(d), z(d), z(d)
        self.xtx += X.T @ X
        self.xtd += X.T @ D
        self.sx += X.sum(0)
        self.sd += D.sum(0)
        self.dd += (D * D).sum(0)
        self.n += X.shape[0]
        P = D + X
        self.ax = _add(self.ax, X.abs().sum(0))
        self.ap = _add(self.ap, P.abs().sum(0))
        if self.rotation is not None:
            r = self.rotation.to(X.device)
            self.rax = _add(self.rax, (X @ r).abs().sum(0))
            self.rap = _add(self.rap, (P @ r).abs().sum(0))
        if self.weighted:
            w = 1.0 / (P * P).sum(1).clamp(min=1e-300)
            Xw = X * w[:, None]
            if self.wxtx is None:
                self.wxtx, self.wxtd = Xw.T @ X, Xw.T @ D
            else:
                self.wxtx += Xw.T @ X
                self.wxtd += Xw.T @ D
            self.wdd += float((w * (D * D).sum(1)).sum())
        if mlp is not None:
            M = masked_rows(mlp.to(x.device), mask)
            if self.mtm is None:
                self.mtm = M.T @ M
                self.mtt = M.T @ (D + M)
            else:
                self.mtm += M.T @ M
                self.mtt += M.T @ (D + M)

    @property
    def xx(self) -> Any:
        """Per-channel ``Σ x²`` (the diagonal of ``XᵀX``)."""
        return self.xtx.diagonal()

    @property
    def post_sq(self) -> Any:
        """Per-channel ``Σ x_post²`` = ``diag(XᵀX) + 2 diag(XᵀΔ) + Σ Δ²``."""
        return self.xtx.diagonal() + 2 * self.xtd.diagonal() + self.dd


def _add(total: Any, part: Any) -> Any:
    return part if total is None else total + part


def collect_gap_stats(
    model: Any,
    adapter: Any,
    batches: Iterable[Batch],
    gaps: Sequence[tuple[int, int]],
    *,
    mlp: bool = False,
    tokens: str = "all",
    weighted: bool = False,
    rotation: Any = None,
    progress: Callable[[int], None] | None = None,
) -> list[GapStats]:
    """One streaming pass over ``batches`` that fills a :class:`GapStats` for every gap of the
    *dense* model (hooks at each gap's two boundaries; the pass stops after the deepest one).

    ``mlp=True`` also taps the MLP output of layer ``s − 1`` (ReplaceMe; needs ``s >= 1``).
    ``tokens="last"`` keeps one sample per row (:func:`sample_mask`; block scores only);
    ``weighted`` adds the per-token weighted moments, ``rotation`` the magnitudes in a rotated
    basis (:class:`GapStats`).
    """
    stats = [GapStats(s, e, weighted=weighted, rotation=rotation) for s, e in gaps]
    points: set[Point] = set()
    for s, e in gaps:
        points |= {("in", s), ("in", e)}
        if mlp and s >= 1:
            points.add(("mlp", s - 1))
    for batch in batches:
        got = run_points(model, adapter, batch, points)
        for st in stats:
            m = got.get(("mlp", st.start - 1)) if mlp else None
            mask = sample_mask(batch.attention_mask, tokens)
            st.update(got[("in", st.start)], got[("in", st.end)], mask, m)
        if progress is not None:
            progress(batch.n_tokens)
    return stats
