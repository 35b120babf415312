"""Proxy-soup baseline: weight interpolation ``(1 - alpha) * post + alpha * base``.

Why it is here: SLR claims that restoring *some layers* beats blending *all weights*; the
fair comparison scores soups on the same proxy and rule. On disk the soup is streamed one
tensor at a time (only two tensors in memory); in memory, :func:`souped` sets a loaded post
model's weights to the blend and puts the original tensors back on exit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from layergraft.errors import InputError
from layergraft.io.checkpoint import Checkpoint
from layergraft.io.writer import OutTensor

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


def plan_soup(base: Checkpoint, post: Checkpoint, alpha: float) -> list[OutTensor]:
    """One output tensor per post tensor; floats blended lazily at write time, others copied
    verbatim from the post model. alpha 0 / 1 are exact byte copies of post / base."""
    from layergraft.surgery.restore import check_compatible

    check_compatible(base, post)
    out: list[OutTensor] = []
    for name, e in post.tensors.items():
        b = base.tensors[name]
        if e.dtype not in _FLOAT or alpha == 0.0:
            out.append(OutTensor.copy_of(e))
        elif alpha == 1.0:
            out.append(OutTensor.copy_of(b))
        else:

            def load(n: str = name) -> Any:
                from layergraft.io.torch_util import tensor_bytes

                pt, bt = post.get_tensor(n), base.get_tensor(n)
                _refuse_nonfinite(n, ((post, pt), (base, bt)))
                return tensor_bytes(blend(pt, bt, alpha))

            out.append(OutTensor(name, e.dtype, e.shape, e.nbytes, load=load))
    return out


def _refuse_nonfinite(name: str, inputs: tuple[tuple[Checkpoint, Any], ...]) -> None:
    """A blend with a NaN/Inf input is NaN/Inf: name the input tensor and its file, which the
    writer's scan of the blended bytes could not (it only sees the result)."""
    from layergraft.io.finite import has_nonfinite, nonfinite_error
    from layergraft.io.torch_util import tensor_bytes

    for ck, t in inputs:
        entry = ck.tensors[name]
        data = tensor_bytes(t)
        if has_nonfinite(data, entry.dtype):
            raise nonfinite_error(name, entry.dtype, data, entry.file)


@contextlib.contextmanager
def souped(post_model: Any, base_model: Any, alpha: float) -> Iterator[Any]:
    """Within the block, every floating parameter of ``post_model`` is the blend with the
    base model's; the original tensors are put back on exit (exception or not). Offloaded
    parameters (accelerate ``device_map``) are blended on demand, one module per forward
    (:func:`~layergraft.surgery.swap.overridden`)."""
    import torch

    from layergraft.offload import offloaded_params, param_value
    from layergraft.surgery.swap import overridden

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

    for name, p in post_model.named_parameters():
        if not p.is_floating_point():
            continue
        if name in post_off:
            values[name] = lambda n=name, q=p: blended(n, q)
        else:
            values[name] = blended(name, p)
    with overridden(post_model, values, post_off):
        yield post_model
