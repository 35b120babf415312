"""Folding recovery operators into standard weights (``scale``, ``replaceme``).

Why folding: a model whose repair lives in its own weights is a standard checkpoint — it
loads anywhere, with no ghost module and no remote code.

``scale`` (Prune&Comp): the compensated stream after a gap is ``α·x_pre + (later
contributions)``. Every later layer reads the stream through a scale-invariant norm
(RMSNorm/LayerNorm), and so does the final norm, so dividing the whole downstream stream by
``α`` changes nothing but the norms' ``eps``: ``x_pre + (later contributions)/α``. Hence the
fold: the residual writers (attention output projection and MLP output projection, weights and
biases; the post-norm weights in Gemma-2/3 and OLMo-2) of **every kept layer after the gap**
are multiplied by ``1/α`` (by the product of ``1/α`` over all earlier gaps when pruning is
scattered). Embeddings and the head are untouched, so tied weights stay tied. Exact up to the
norms' ``eps``. (:func:`layergraft.prune.model.finalize_scale` applies it.)

``replaceme`` (ReplaceMe): the map ``T`` on the MLP output of the layer before the gap is
folded into that MLP's output projection (:func:`fold_replaceme`).

A weight offloaded by a device map holds no values, so folding into it is refused with the
two ways out (:func:`layergraft.models.offload.refuse_offloaded`).
"""

from __future__ import annotations

from typing import Any

from layergraft.errors import ArchitectureError
from layergraft.models.offload import refuse_offloaded
from layergraft.prune.recover import Operator

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
