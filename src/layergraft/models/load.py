"""Loading a model for computation (sweeps, generation, calibration).

Why one loader: every command that runs a model must resolve the same inputs (directory,
hub id, .gguf) through the same validation as surgery does, pick dtype and placement the
same way, and fail with one line rather than a transformers traceback.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from layergraft.checkpoint.reader import Checkpoint, open_checkpoint
from layergraft.errors import InputError
from layergraft.models import ghost as G
from layergraft.models.placement import Placement
from layergraft.models.quiet import quiet_transformers


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
    spec: str | os.PathLike[str] | Checkpoint,
    *,
    device: str | None = None,
    dtype: Any = "auto",
    device_map: Any = None,
    allow_pickle: bool = False,
) -> Any:
    """A causal LM in eval mode, placed as :class:`~layergraft.models.placement.Placement`
    says (``device``/``dtype``/``device_map``; defaults: CUDA when present, float32 on CPU).

    An explicit device map is checked against the model's modules and made flat first
    (:meth:`~layergraft.models.placement.Placement.resolved_map`).

    ``spec`` is a directory, hub id, ``.gguf`` file or opened checkpoint; a ghosted layergraft
    output loads **without** running its shipped remote code: the family's own class is built
    from the recorded base config and layergraft's copy of the ghost module is attached (the
    same code the directory ships for ``trust_remote_code``)."""
    from transformers import AutoModelForCausalLM

    place = Placement(device, dtype, device_map)
    dt = place.torch_dtype()
    if not isinstance(spec, Checkpoint) and Path(spec).is_dir() and G.is_ghosted(Path(spec)):
        model = G.load_ghosted(Path(spec), dtype=dt, device_map=place.resolved_map(spec))
    else:
        ck = (
            spec if isinstance(spec, Checkpoint) else open_loadable(spec, allow_pickle=allow_pickle)
        )
        try:
            with quiet_transformers():
                model = AutoModelForCausalLM.from_pretrained(
                    str(ck.path),
                    dtype=dt,
                    device_map=place.resolved_map(ck),
                    trust_remote_code=False,
                )
        except (OSError, ValueError) as e:
            raise InputError(
                f"{ck.origin}: transformers cannot load this model ({type(e).__name__}: {str(e).splitlines()[0]})"
            ) from e
    if device_map is None:
        model.to(place.target)
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


def load_with_tokenizer(
    spec: str | os.PathLike[str] | Checkpoint,
    *,
    tokenizer: Any = None,
    device: str | None = None,
    dtype: Any = "auto",
    device_map: Any = None,
    allow_pickle: bool = False,
) -> tuple[Any, Any, Checkpoint | None]:
    """``(model, tokenizer, checkpoint)``: :func:`load_model` plus the model's tokenizer (or
    ``tokenizer``, a path or object, when given); the checkpoint is None for a ghosted dir."""
    if isinstance(spec, Checkpoint):
        ck: Checkpoint | None = spec
    elif Path(spec).is_dir() and G.is_ghosted(Path(spec)):
        ck = None
    else:
        ck = open_loadable(spec, allow_pickle=allow_pickle)
    model = load_model(ck or spec, device=device, dtype=dtype, device_map=device_map)
    tok = load_tokenizer(tokenizer if tokenizer is not None else (ck.path if ck else spec))
    return model, tok, ck


def model_and_tokenizer(
    model: str | os.PathLike[str] | tuple[Any, Any],
    *,
    device: str | None = None,
    dtype: Any = "auto",
    device_map: Any = None,
) -> tuple[Any, Any, str]:
    """``(model, tokenizer, name)`` for what evaluation commands accept: a path (loaded with
    :func:`load_model`, ghosted outputs included) or an in-memory ``(model, tokenizer)``."""
    if isinstance(model, tuple):
        return model[0], model[1], getattr(model[0].config, "_name_or_path", "<in memory>")
    m = load_model(model, device=device, dtype=dtype, device_map=device_map)
    return m, load_tokenizer(model), str(model)


def local_dir(spec: str | os.PathLike[str], allow_pickle: bool = False) -> Path:
    """The local checkpoint directory of a path, ``.gguf`` file or hub id (validated, not
    loaded): what engines that load by path themselves (vLLM) are given."""
    return open_checkpoint(spec, allow_pickle=allow_pickle, validate_arch=False).path
