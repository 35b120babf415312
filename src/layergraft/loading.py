"""Loading a model for computation (sweeps, generation, calibration).

Why one loader: every command that runs a model must resolve the same inputs (directory,
hub id, .gguf) through the same validation as surgery does, pick dtype and placement the
same way, and fail with one line rather than a transformers traceback.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
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


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' load report and progress bars (layergraft shows its own
    progress; ghost keys in a pruned model's load report are expected)."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    # accelerate's "some parameters are on the meta device because they were offloaded":
    # the offload the user asked for with --device-map, not news
    acc = logging.getLogger("accelerate.big_modeling")
    acc_level = acc.level
    acc.setLevel(logging.ERROR)
    try:
        yield
    finally:
        acc.setLevel(acc_level)
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def require_transformers_family(ck: Checkpoint) -> None:
    """Refuse, before any work, a checkpoint transformers cannot build from its config.

    Why here and not at load time: an unknown ``model_type`` would first go through
    architecture discovery (a warning) and then fail inside ``from_pretrained`` after the
    expensive steps; a command that must *run* the model should say so up front, in one line.
    Pure-IO commands (restore, soup, inspect) do not call this: they work on tensor names.
    """
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    if "layergraft_ghost" in ck.config:
        raise InputError(
            f"{ck.origin} is a ghosted layergraft output, which this command cannot take as input; "
            "give the original model (to prune more layers, name them all in one --remove)"
        )
    mt = ck.config.get("model_type")
    if mt not in CONFIG_MAPPING_NAMES:
        import transformers

        raise InputError(
            f"{ck.origin}: model_type {mt!r} is not an architecture transformers {transformers.__version__} can build "
            "(and layergraft runs no remote code); use a model of a transformers-native family or upgrade transformers"
        )


def open_loadable(spec: str | os.PathLike[str], *, allow_pickle: bool = False) -> Checkpoint:
    """:func:`open_checkpoint` for commands that will load the model with transformers:
    the family is checked (:func:`require_transformers_family`) before the architecture
    adapter is resolved, so an unloadable model gives one error line and no discovery warning."""
    ck = open_checkpoint(spec, allow_pickle=allow_pickle, validate_arch=False)
    require_transformers_family(ck)
    _ = ck.adapter
    return ck


def load_model(
    path: str | os.PathLike[str],
    *,
    dtype: Any = None,
    device_map: Any = None,
    allow_pickle: bool = False,
) -> Any:
    """A causal LM in eval mode, including a ghosted layergraft output, **without** running
    its shipped remote code: the family's own class is built from the recorded base config and
    layergraft's copy of the ghost module is attached (the same code the directory ships for
    ``trust_remote_code``). ``dtype``: a torch dtype, a name, or None for float32."""
    import torch
    from transformers import AutoModelForCausalLM

    dt = resolve_dtype(dtype) if isinstance(dtype, str) else (dtype or torch.float32)
    p = Path(path)
    from layergraft.surgery import ghost as G

    if p.is_dir() and G.is_ghosted(p):
        return G.load_ghosted(p, dtype=dt, device_map=device_map)
    ck = open_loadable(path, allow_pickle=allow_pickle)
    try:
        with quiet_transformers():
            model = AutoModelForCausalLM.from_pretrained(
                str(ck.path), dtype=dt, device_map=device_map, trust_remote_code=False
            )
    except (OSError, ValueError) as e:
        raise InputError(
            f"{ck.origin}: transformers cannot load this model ({type(e).__name__}: {str(e).splitlines()[0]})"
        ) from e
    return model.eval()


def load_tokenizer(spec: Any) -> Any:
    """A tokenizer object as is, or ``AutoTokenizer`` from a model directory / hub id / gguf."""
    if not isinstance(spec, (str, os.PathLike)):
        return spec
    from transformers import AutoTokenizer

    p = Path(spec)
    if not p.is_dir():
        p = open_checkpoint(spec, validate_arch=False).path
    try:
        # never the checkpoint's own code (a ghosted output's auto_map names some); quiet:
        # transformers warns that a ghosted config's model_type is not the family's
        with quiet_transformers():
            return AutoTokenizer.from_pretrained(str(p), trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise InputError(
            f"no usable tokenizer in {p} ({type(e).__name__}); copy the tokenizer files next to the weights"
        ) from e


def load_causal_lm(
    spec: str | os.PathLike[str] | Checkpoint,
    *,
    dtype: str | None = "auto",
    device: str | None = None,
    device_map: str | dict[str, Any] | None = None,
    allow_pickle: bool = False,
    with_tokenizer: bool = True,
) -> tuple[Any, Any, Checkpoint | None]:
    """(model in eval mode, tokenizer or None, checkpoint or None for a ghosted dir).
    ``device_map`` (accelerate) wins over ``device``; without either the model goes to CUDA
    when present, else CPU. ``dtype="auto"`` keeps the checkpoint's dtype."""
    from layergraft.surgery import ghost as G

    if not isinstance(spec, Checkpoint) and Path(spec).is_dir() and G.is_ghosted(Path(spec)):
        ck = None
        model = load_model(spec, dtype=None if dtype == "auto" else dtype, device_map=device_map)
        path: Any = spec
    else:
        ck = (
            spec if isinstance(spec, Checkpoint) else open_loadable(spec, allow_pickle=allow_pickle)
        )
        path = ck.path
        model = load_model(ck.path, dtype=resolve_dtype(dtype), device_map=device_map)
    if device_map is None:
        model.to(device or default_device())
    tok = load_tokenizer(path) if with_tokenizer else None
    return model, tok, ck
