"""Proxy-soup baseline: weight interpolation ``(1 - alpha) * post + alpha * base``.

Why it is here: SLR claims that restoring *some layers* beats blending *all weights*; the
fair comparison scores soups on the same proxy and rule. On disk the soup is streamed one
tensor at a time (only two tensors in memory); in memory, :func:`souped` sets a loaded post
model's weights to the blend and puts the original tensors back on exit.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from layergraft.arch import adapter_for_model
from layergraft.arch.parts import parse_parts
from layergraft.arch.spec import LAYER_PARTS
from layergraft.checkpoint.atomic import check_output_target
from layergraft.checkpoint.dtypes import tensor_bytes
from layergraft.checkpoint.finite import has_nonfinite, nonfinite_error
from layergraft.checkpoint.model_dir import write_model_dir
from layergraft.checkpoint.reader import Checkpoint, as_checkpoint
from layergraft.checkpoint.writer import OutTensor
from layergraft.errors import InputError
from layergraft.models.offload import offloaded_params, param_value
from layergraft.ranges import Range, format_ranges
from layergraft.slr.hybrid.pair import check_compatible
from layergraft.slr.hybrid.swap import RangesLike, as_ranges, overridden

PathLike = str | os.PathLike[str]

_FLOAT = {"F16", "BF16", "F32", "F64"}


def check_alpha(alpha: float) -> float:
    a = float(alpha)
    if not 0.0 <= a <= 1.0:
        raise InputError(
            f"--alpha {alpha} is outside [0, 1]; give a value between 0 (the post model) and 1 (the base model)"
        )
    return a


def blend(post: Any, base: Any, alpha: float) -> Any:
    """``(1 - alpha) * post + alpha * base`` computed in float32 (float64 for F64), cast back."""
    import torch

    work = torch.float64 if post.dtype == torch.float64 else torch.float32
    out = torch.lerp(post.to(work), base.to(work), alpha)
    return out.to(post.dtype)


def _blended(ck: Checkpoint, parts: tuple[str, ...], layers: Iterable[Range] | None) -> Any:
    """Which tensors a soup of ``parts`` blends: every floating one for all parts, else the
    layer tensors of those parts (embeddings, final norm and head stay the post model's);
    with ``layers``, only the tensors of those decoder layers (an interval soup)."""
    if parts == LAYER_PARTS and layers is None:
        return lambda name: True
    ad = ck.adapter
    inside = None if layers is None else {i for s, e in layers for i in range(s, e)}

    def wanted(name: str) -> bool:
        where = ad.classify(name)
        if where.section != "layer" or ad.layer_part(name) not in parts:
            return False
        return inside is None or where.layer in inside

    return wanted


def plan_soup(
    base: Checkpoint,
    post: Checkpoint,
    alpha: float,
    parts: str | Iterable[str] = "all",
    layers: Iterable[Range] | None = None,
) -> list[OutTensor]:
    """One output tensor per post tensor; floats blended lazily at write time (only those of
    ``parts``, of the decoder layers in ``layers`` when given), others copied verbatim from
    the post model. alpha 0 / 1 are exact byte copies of post / base."""
    check_compatible(base, post)
    wanted = _blended(post, parse_parts(parts), None if layers is None else list(layers))
    out: list[OutTensor] = []
    for name, e in post.tensors.items():
        b = base.tensors[name]
        if e.dtype not in _FLOAT or alpha == 0.0 or not wanted(name):
            out.append(OutTensor.copy_of(e))
        elif alpha == 1.0:
            out.append(OutTensor.copy_of(b))
        else:

            def load(n: str = name) -> Any:
                pt, bt = post.get_tensor(n), base.get_tensor(n)
                _refuse_nonfinite(n, ((post, pt), (base, bt)))
                return tensor_bytes(blend(pt, bt, alpha))

            out.append(OutTensor(name, e.dtype, e.shape, e.nbytes, load=load))
    return out


def _refuse_nonfinite(name: str, inputs: tuple[tuple[Checkpoint, Any], ...]) -> None:
    """A blend with a NaN/Inf input is NaN/Inf: name the input tensor and its file, which the
    writer's scan of the blended bytes could not (it only sees the result)."""
    for ck, t in inputs:
        entry = ck.tensors[name]
        data = tensor_bytes(t)
        if has_nonfinite(data, entry.dtype):
            raise nonfinite_error(name, entry.dtype, data, entry.file)


@contextlib.contextmanager
def souped(
    post_model: Any,
    base_model: Any,
    alpha: float,
    parts: str | Iterable[str] = "all",
    layers: RangesLike | None = None,
) -> Iterator[Any]:
    """Within the block, every floating parameter of ``post_model`` (of the layers' ``parts``
    only, when given) is the blend with the base model's; the original tensors are put back on
    exit (exception or not). With ``layers`` (ranges: ``"4:7"``, a list of those or of
    ``(start, end)`` pairs, checked like every range), only those decoder layers are blended —
    an interval soup; embeddings, final norm and head stay the post model's, as in SLR.
    Offloaded parameters (accelerate ``device_map``) are blended on demand, one module per
    forward (:func:`~layergraft.slr.hybrid.swap.overridden`)."""
    import torch

    post_off, base_off = offloaded_params(post_model), offloaded_params(base_model)
    # the post model's own offload maps, taken now: inside the block its hooks read overlays
    # whose entries call blended(), which must see the original values
    post_src = {n: (hook.weights_map, key) for n, (hook, key) in post_off.items()}
    base_params = dict(base_model.named_parameters())
    values: dict[str, Any] = {}

    def blended(name: str, p: Any) -> Any:
        with torch.no_grad():
            pv = post_src[name][0][post_src[name][1]] if name in post_src else p.data
            bv = param_value(base_params[name], name, base_off).to(pv.device)
            return blend(pv, bv, alpha)

    chosen = parse_parts(parts)
    keep: set[str] | None = None
    if chosen != LAYER_PARTS or layers is not None:
        adapter = adapter_for_model(post_model)
        ranges = None if layers is None else as_ranges(layers, len(adapter.layers(post_model)))
        which = (
            sorted({i for s, e in ranges for i in range(s, e)})
            if ranges is not None
            else range(adapter.num_layers)
        )
        keep = {n for i in which for n, _ in adapter.layer_parameters(post_model, i, chosen)}
    for name, p in post_model.named_parameters():
        if not p.is_floating_point() or (keep is not None and name not in keep):
            continue
        if name in post_off:
            values[name] = lambda n=name, q=p: blended(n, q)
        else:
            values[name] = blended(name, p)
    with overridden(post_model, values, post_off):
        yield post_model


def soup(
    base: PathLike | Checkpoint,
    post: PathLike | Checkpoint,
    alpha: float,
    out: PathLike,
    *,
    parts: str | Iterable[str] = "all",
    layers: RangesLike | None = None,
    force: bool = False,
    max_shard_bytes: int | None = None,
    hash_inputs: bool = False,
    allow_pickle: bool = False,
    progress: bool = True,
    command: str | None = None,
    hash_outputs: bool = True,
    fsync: bool = False,
) -> dict[str, Any]:
    """Write the weight interpolation ``(1 - alpha) * post + alpha * base`` (every floating
    tensor, or the layer tensors of ``parts``; streamed one at a time): the proxy-soup
    baseline SLR is compared with. With ``layers`` (``"4:7"`` or ranges), only those decoder
    layers are blended: an interval soup, SLR's family (alpha 1 is the restore)."""
    a = check_alpha(alpha)
    chosen = parse_parts(parts)
    b = as_checkpoint(base, allow_pickle)
    p = as_checkpoint(post, allow_pickle)
    ranges = None if layers is None else as_ranges(layers, p.adapter.num_layers)
    check_output_target(out, force=force, inputs=[b.path, p.path], flag="--out")
    tensors = plan_soup(b, p, a, chosen, ranges)
    what = (
        "every floating tensor"
        if chosen == LAYER_PARTS and ranges is None
        else f"the {'/'.join(chosen)} tensors of "
        + ("every layer" if ranges is None else f"layers {format_ranges(ranges)}")
    )
    return write_model_dir(
        out,
        operation="soup",
        inputs={"base": b, "post": p},
        sidecars_from=p,
        tensors=tensors,
        recipe={
            "base": b.origin,
            "post": p.origin,
            "alpha": a,
            "parts": "all" if chosen == LAYER_PARTS else ",".join(chosen),
            **({"layers": format_ranges(ranges)} if ranges is not None else {}),
        },
        details={
            "alpha": a,
            "parts": list(chosen),
            "layers": format_ranges(ranges) if ranges is not None else "all",
            "formula": "(1 - alpha) * post + alpha * base",
            "family": p.adapter.family,
        },
        title=f"soup of {Path(p.origin).name} and {Path(b.origin).name}, alpha={a:g}",
        summary=f"Weight interpolation `(1 - {a:g}) * post + {a:g} * base` of {what} "
        f"(post `{p.origin}`, base `{b.origin}`), computed in float32 and stored in the input dtype. "
        "Config, tokenizer and chat template from the post model.",
        force=force,
        max_shard_bytes=max_shard_bytes,
        hash_inputs=hash_inputs,
        progress=progress,
        desc=f"soup {a:g}",
        command=command,
        hash_outputs=hash_outputs,
        fsync=fsync,
    )
