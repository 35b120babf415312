"""Loading a model for computation (sweeps, generation, calibration).

Why one loader: every command that runs a model must resolve the same inputs (directory,
hub id, .gguf) through the same validation as surgery does, pick dtype and placement the
same way, and fail with one line rather than a transformers traceback.
"""

from __future__ import annotations

import os
from typing import Any

from layergraft.errors import InputError
from layergraft.io.checkpoint import Checkpoint, open_checkpoint

_DTYPES = ("auto", "float32", "bfloat16", "float16")


def resolve_dtype(dtype: str | None) -> Any:
    import torch

    if dtype in (None, "auto"):
        return "auto"
    if dtype not in _DTYPES:
        raise InputError(f"--dtype {dtype!r} is not one of {', '.join(_DTYPES)}")
    return getattr(torch, dtype)


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_causal_lm(
    spec: str | os.PathLike[str] | Checkpoint,
    *,
    dtype: str | None = "auto",
    device: str | None = None,
    device_map: str | dict[str, Any] | None = None,
    allow_pickle: bool = False,
    with_tokenizer: bool = True,
) -> tuple[Any, Any, Checkpoint]:
    """(model in eval mode, tokenizer or None, checkpoint). ``device_map`` (accelerate) wins
    over ``device``; without either the model goes to CUDA when present, else CPU."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # layergraft shows its own progress; one bar per step
    ck = spec if isinstance(spec, Checkpoint) else open_checkpoint(spec, allow_pickle=allow_pickle)
    kwargs: dict[str, Any] = {"dtype": resolve_dtype(dtype)}
    if device_map is not None:
        kwargs["device_map"] = device_map
    try:
        model = AutoModelForCausalLM.from_pretrained(str(ck.path), **kwargs)
    except (OSError, ValueError) as e:
        raise InputError(
            f"{ck.origin}: transformers cannot load this model ({type(e).__name__}: {str(e).splitlines()[0]})"
        ) from e
    if device_map is None:
        model.to(device or default_device())
    model.eval()
    tok = None
    if with_tokenizer:
        try:
            tok = AutoTokenizer.from_pretrained(str(ck.path))
        except (OSError, ValueError) as e:
            raise InputError(
                f"{ck.origin}: no usable tokenizer ({type(e).__name__}); copy the tokenizer files next to the weights"
            ) from e
    return model, tok, ck
