"""Layer pruning in memory (fit → cut → recover) and on disk (stream the kept tensors).

Why in memory first: the operators are fitted on activations, so the model is loaded anyway;
the pruned in-memory model is what the tests compare the saved directory against. The
directory itself is still written by streaming: untouched tensors are byte copies of the input
checkpoint under their new layer index, only folded tensors come from memory.

Order of work per gap, ascending (so an earlier ghost's position never shifts): cut the
block, renumber ``layer_idx``, slice the config, then insert the operator on the stream
entering the first kept layer after the gap (``scale`` also goes in as a hook while fitting;
:func:`finalize` folds it into weights at the end, ``replaceme`` is folded at once).
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from layergraft.calibrate import Batch, GapStats, collect_gap_stats, run_points
from layergraft.errors import RangeError
from layergraft.ranges import Range, check_range, format_ranges, parse_ranges
from layergraft.surgery import ghost as G
from layergraft.surgery import recover as R

log = logging.getLogger(__name__)


# ---- which layers ----------------------------------------------------------------------------
def parse_removal(spec: str | Sequence[Any], num_layers: int) -> list[Range]:
    """``"3:5"``, ``"3,7,9"`` or mixed ``"3:5,9"`` -> maximal contiguous gaps, sorted.

    Bare indices mean one layer; adjacent items merge (``3,4`` is the gap ``3:5``). Refuses
    removing every layer.
    """
    items = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    texts = []
    for it in items:
        if isinstance(it, int) or (isinstance(it, str) and it.lstrip("-").isdigit()):
            i = int(it)
            texts.append(f"{i}:{i + 1}")
        else:
            texts.append(it)
    ranges = parse_ranges(texts if texts else spec, num_layers)
    gaps = merge_adjacent(ranges)
    removed = sum(e - s for s, e in gaps)
    if removed >= num_layers:
        raise RangeError(
            f"removing {format_ranges(gaps)} would remove all {num_layers} layers; keep at least one"
        )
    return gaps


def merge_adjacent(ranges: Sequence[Range]) -> list[Range]:
    out: list[Range] = []
    for s, e in sorted(ranges):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(e, out[-1][1]))
        else:
            out.append((s, e))
    return [check_range(r) for r in out]


def kept_layers(num_layers: int, gaps: Sequence[Range]) -> list[int]:
    removed = {i for s, e in gaps for i in range(s, e)}
    return [i for i in range(num_layers) if i not in removed]


# ---- cutting ---------------------------------------------------------------------------------
def cut_block(model: Any, adapter: Any, start: int, end: int) -> None:
    """Remove current layers ``[start, end)`` in place: ModuleList, ``layer_idx``, config."""
    layers = adapter.layers(model)
    n = len(layers)
    keep = [i for i in range(n) if not (start <= i < end)]
    for i in reversed(range(start, end)):
        del layers[i]
    adapter.slice_model_config(model, keep)
    adapter.renumber_layer_idx(model)


# ---- in-memory pruning -----------------------------------------------------------------------
@dataclass
class Pruned:
    """The result of :func:`prune_model`: the model is modified in place."""

    model: Any
    gaps: list[Range]
    keep: list[int]
    method: str
    ops: list[R.Operator]
    #: parameters changed by folding (replaceme, scale): written from memory, not copied
    changed: list[Any] = field(default_factory=list)
    hooks: list[Any] = field(default_factory=list)

    def describe(self) -> list[dict[str, Any]]:
        return [op.describe() for op in self.ops]


def _fit_gap(method: str, st: GapStats, damp: float, bias: bool) -> R.Operator:
    return R.fit(method, st, damp=damp, bias=bias)


def _sequential_stats(
    dense: Any,
    work: Any,
    adapter: Any,
    batches: Sequence[Batch],
    gap: Range,
    offset: int,
    mlp: bool,
) -> GapStats:
    """Statistics for ``gap`` with ``X_pre`` from the partly pruned ``work`` model (the
    layers before the gap already cut and recovered) and the target ``X_post`` from the dense
    model: each operator repairs the error the earlier ones left."""
    s, e = gap
    st = GapStats(s, e)
    for b in batches:
        post = run_points(dense, adapter, b, [("in", e)])[("in", e)]
        pts = [("in", s - offset)] + ([("mlp", s - offset - 1)] if mlp and s > 0 else [])
        got = run_points(work, adapter, b, pts)
        m = got.get(("mlp", s - offset - 1))
        st.update(got[("in", s - offset)], post, b.attention_mask, m)
    return st


def prune_model(
    model: Any,
    adapter: Any,
    gaps: Sequence[Range],
    method: str,
    batches: Sequence[Batch],
    *,
    damp: float = R.DEFAULT_DAMP,
    bias: bool = False,
    sequential: bool = False,
    fold: bool = True,
    stats: Sequence[GapStats] | None = None,
) -> Pruned:
    """Prune ``gaps`` from ``model`` (in place) and recover each with ``method``.

    Dense mode (default) fits every operator on the dense model's activations in one
    streaming pass. ``sequential=True`` refits gap by gap on the partly pruned model (a deep
    copy of the dense one is kept as the target, so memory doubles). ``fold=False`` leaves
    ``scale`` as a scalar ghost instead of folding it (for comparison only). ``stats``:
    dense statistics already collected for these gaps (to fit several methods from one pass).
    """
    gaps = list(gaps)
    n = len(adapter.layers(model))
    keep = kept_layers(n, gaps)
    mlp = method == "replaceme"
    if method == "replaceme" and gaps[0][0] == 0:
        raise RangeError(
            f"replaceme folds into the MLP of the layer before the gap; gap {gaps[0][0]}:{gaps[0][1]} starts "
            "at layer 0 — keep layer 0 or use --recover ghost"
        )
    if (
        method == "replaceme"
        and getattr(adapter.layers(model)[0], "post_feedforward_layernorm", None) is not None
    ):
        raise R.ArchitectureError(
            f"{adapter.family} normalises the MLP output before adding it to the residual, so ReplaceMe "
            "cannot be folded into its down projection; use --recover ghost"
        )
    dense_ops: list[R.Operator] | None = None
    dense = None
    if method != "none" and not sequential:
        if stats is None:
            stats = collect_gap_stats(model, adapter, batches, gaps, mlp=mlp)
        dense_ops = [_fit_gap(method, st, damp, bias) for st in stats]
    elif method != "none" and sequential:
        dense = copy.deepcopy(model)
    result = Pruned(model, gaps, keep, method, [])
    offset = 0
    for g, (s, e) in enumerate(gaps):
        if method == "none":
            op = R.Operator("none", s, e, "none")
        elif dense_ops is not None:
            op = dense_ops[g]
        else:
            st = _sequential_stats(dense, model, adapter, batches, (s, e), offset, mlp)
            op = _fit_gap(method, st, damp, bias)
        cut_block(model, adapter, s - offset, e - offset)
        pos = s - offset  # the first kept layer after the gap now sits here
        if op.kind in ("full", "diag", "scale"):
            mod = G.operator_module(op, adapter.hidden_size)
            result.hooks.append(G.attach_ghost(model, adapter, mod, pos))
        elif op.kind == "replaceme":
            result.changed.extend(R.fold_replaceme(adapter, model, op, pos - 1))
        result.ops.append(op)
        offset += e - s
    del dense
    if fold:
        finalize_scale(result, adapter)
    return result


def finalize_scale(p: Pruned, adapter: Any) -> None:
    """Fold scalar ghosts into weights (see :func:`layergraft.surgery.recover.fold_scale` for
    where and why it is exact up to the norms' eps), remove their hooks, and drop the ghost
    container if nothing is left in it."""
    from torch import nn

    ghosts = getattr(p.model, G.ATTR, None)
    if ghosts is None:
        return
    scalars = {int(k): float(g.scale) for k, g in ghosts.items() if g.kind == "scalar"}
    if not scalars:
        return
    factor = 1.0
    for i in range(len(adapter.layers(p.model))):
        if i in scalars:
            factor /= scalars[i]
        if factor != 1.0:
            p.changed.extend(R.scale_writers(adapter, p.model, i, factor))
    for h in p.hooks:
        h.remove()
    for k in scalars:
        del ghosts[str(k)]
    p.hooks = []
    if len(ghosts):
        p.hooks = G.install_ghosts(
            p.model,
            nn.ModuleDict(dict(ghosts.items())),
            adapter.layers_path,
            adapter.spec.norm_module,
        )
    else:
        delattr(p.model, G.ATTR)


# ---- on disk ---------------------------------------------------------------------------------
def _changed_by_checkpoint_name(p: Pruned, model_adapter: Any, ck_adapter: Any) -> dict[str, Any]:
    """Folded parameters, keyed by their *input* checkpoint name (old layer index)."""
    ids = {id(t) for t in p.changed}
    out: dict[str, Any] = {}
    prefix = model_adapter.layers_path + "."
    for name, param in p.model.named_parameters(remove_duplicate=False):
        if id(param) not in ids or not name.startswith(prefix):
            continue
        j, _, rest = name[len(prefix) :].partition(".")
        out[ck_adapter.layer_prefix(p.keep[int(j)]) + rest] = param.detach()
    return out


def _family_classes(config: dict[str, Any]) -> tuple[str, str]:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    mt = config.get("model_type")
    arch = (config.get("architectures") or [None])[0] or MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[mt]
    return CONFIG_MAPPING_NAMES[mt], arch


def write_pruned(
    ck: Any,
    p: Pruned,
    model_adapter: Any,
    out: Path,
    *,
    max_shard_bytes: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[dict[str, Any]]:
    """Write the pruned model into ``out`` (an empty temp dir): kept tensors renamed to their
    new layer index (byte copies unless folded), ghost operators in ``ghost.safetensors``, the
    sliced config (rewritten for remote code when there are ghosts) and the input's sidecars.
    Returns the written weight files with their sha256."""
    import json
    import shutil

    from layergraft.io.checkpoint import INDEX_NAME
    from layergraft.io.writer import DEFAULT_MAX_SHARD_BYTES, OutTensor, write_checkpoint

    ad = ck.adapter
    new_index = {old: new for new, old in enumerate(p.keep)}
    changed = _changed_by_checkpoint_name(p, model_adapter, ad)
    tensors = []
    for name, entry in ck.tensors.items():
        part = ad.classify(name)
        new_name = name
        if part.section == "layer":
            if part.layer not in new_index:
                continue
            new_name = (
                ad.layer_prefix(new_index[part.layer]) + name[len(ad.layer_prefix(part.layer)) :]
            )
        if name in changed:
            from layergraft.io.torch_util import torch_dtype

            t = changed.pop(name).to(torch_dtype(entry.dtype)).cpu().contiguous()
            tensors.append(OutTensor.from_torch(new_name, t))
        else:
            tensors.append(OutTensor.copy_of(entry, new_name))
    if changed:  # pragma: no cover - a folded parameter the checkpoint does not name
        raise RuntimeError(f"folded tensors not found in the checkpoint: {sorted(changed)}")
    limit = max_shard_bytes or DEFAULT_MAX_SHARD_BYTES
    res = write_checkpoint(out, tensors, max_shard_bytes=limit, progress=progress)
    files = res.as_json()
    config = ad.slice_config(ck.config, p.keep)
    gt = G.ghost_tensors(p.model)
    if gt:
        gres = write_checkpoint(
            out, [OutTensor.from_torch(k, v) for k, v in gt.items()], stem="ghost"
        )
        files += gres.as_json()
        # transformers prefers a lone model.safetensors over the index: use shard names so
        # the index (which lists ghost.safetensors too) is what gets loaded
        if (out / "model.safetensors").exists():
            os.rename(out / "model.safetensors", out / "model-00001-of-00001.safetensors")
            res.weight_map = {k: "model-00001-of-00001.safetensors" for k in res.weight_map}
            for f in files:
                if f["name"] == "model.safetensors":
                    f["name"] = "model-00001-of-00001.safetensors"
        weight_map = dict(res.weight_map) | dict(gres.weight_map)
        index = {
            "metadata": {"total_size": res.total_size + gres.total_size},
            "weight_map": weight_map,
        }
        (out / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
        base_cfg, base_model = _family_classes(ck.config)
        gcfg = G.ghost_config(model_adapter, p.model)
        gcfg["base_model_type"] = ck.config.get("model_type")
        gcfg["base_architectures"] = ck.config.get("architectures") or [base_model]
        config = G.remote_config(config, gcfg)
        G.write_remote_code(out, base_cfg, base_model)
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    for f in ck.sidecar_files():
        if f.name != "config.json":
            shutil.copy2(f, out / f.name)
    return files
