"""Is this a base/post pair? The checks every SLR command runs before touching a tensor.

Why strict: restore, soup, swap and the sweeps exchange tensors one for one between the two
models; a pair that differs in family, depth, width, vocabulary, tensor names, shapes or dtypes
would give a silently broken hybrid. Each refusal names what differs and the fix.
"""

from __future__ import annotations

from layergraft.checkpoint.reader import Checkpoint
from layergraft.errors import MismatchError


def check_compatible(base: Checkpoint, post: Checkpoint) -> None:
    """Refuse pairs whose tensors cannot be exchanged one for one."""
    ab, ap = base.adapter, post.adapter
    if ab.family != ap.family or base.config.get("model_type") != post.config.get("model_type"):
        raise MismatchError(
            f"base is {base.config.get('model_type')} ({ab.family}) but post is {post.config.get('model_type')} ({ap.family}); "
            "give a base/post pair of one architecture"
        )
    if ab.num_layers != ap.num_layers:
        raise MismatchError(
            f"base has {ab.num_layers} layers but post has {ap.num_layers}; give a pair with equal layer counts"
        )
    for what, a, b in (
        ("hidden size", ab.hidden_size, ap.hidden_size),
        ("vocab size", ab.vocab_size, ap.vocab_size),
    ):
        if a != b:
            raise MismatchError(
                f"base {what} is {a} but post {what} is {b}; give a base/post pair of one model family and size"
            )
    only_b = sorted(set(base.tensors) - set(post.tensors))
    only_p = sorted(set(post.tensors) - set(base.tensors))
    if only_b or only_p:
        name = (only_b or only_p)[0]
        side = "base" if only_b else "post"
        raise MismatchError(
            f"tensor {name!r} exists only in the {side} model; the two checkpoints differ in structure — give a base/post pair of one model"
        )
    for name, e in post.tensors.items():
        b = base.tensors[name]
        if b.shape != e.shape:
            raise MismatchError(
                f"tensor {name!r} is {list(b.shape)} in base but {list(e.shape)} in post; give a base/post pair of one model size"
            )
        if b.dtype != e.dtype:
            raise MismatchError(
                f"tensor {name!r} is {b.dtype} in base but {e.dtype} in post; convert one model to the other's dtype first"
            )
