"""Writing a self-describing model directory: weights, sidecars, recipe, provenance, card.

Why one function: every command that writes a model (restore, soup, prune) must leave the
same kind of directory — weights streamed and hashed, the input's config/tokenizer/chat
template, the recipe that replays it, ``layergraft.json`` and a model card — and must leave
it atomically. Commands say *what* to write (tensors, recipe, details, card text); this module
says *how*.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from layergraft.checkpoint.atomic import atomic_dir, check_output_target
from layergraft.checkpoint.provenance import (
    RECIPE_NAME,
    build_provenance,
    model_card,
    write_model_card,
    write_provenance,
)
from layergraft.checkpoint.reader import Checkpoint
from layergraft.checkpoint.writer import (
    DEFAULT_MAX_SHARD_BYTES,
    OutTensor,
    WriteResult,
    write_checkpoint,
)
from layergraft.recipe import dump_recipe


def default_shard_bytes(ck: Checkpoint) -> int:
    """Shard like the input: the largest input shard size (so a restore mirrors ``cp``)."""
    if len(ck.weight_files) == 1:
        return DEFAULT_MAX_SHARD_BYTES
    return max(f.stat().st_size for f in ck.weight_files)


def copy_sidecars(src: Checkpoint, dst: Path, *, skip: Sequence[str] = ()) -> list[str]:
    """Config, tokenizer, chat template and generation config, copied verbatim."""
    names = []
    for f in src.sidecar_files():
        if f.name in skip:
            continue
        shutil.copyfile(f, dst / f.name)
        names.append(f.name)
    return names


class _NoProgress:
    """What :func:`byte_progress` returns when hidden: importing tqdm alone costs ~30 ms,
    a sixth of copying a 400 MB model with ``cp``."""

    def __enter__(self) -> _NoProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n: int) -> None:
        return None


def byte_progress(total: int, desc: str, enabled: bool) -> Any:
    """A tqdm bar counting bytes (the unit of every write), hidden when not ``enabled``."""
    if not enabled:
        return _NoProgress()
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        desc=desc,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        leave=False,
    )


def write_model_dir(
    out: str | Path,
    *,
    operation: str,
    inputs: dict[str, Checkpoint],
    sidecars_from: Checkpoint,
    tensors: list[OutTensor],
    recipe: dict[str, Any],
    details: dict[str, Any],
    title: str,
    summary: str,
    force: bool = False,
    max_shard_bytes: int | None = None,
    hash_inputs: bool = False,
    progress: bool = True,
    desc: str = "write",
    command: str | None = None,
    hash_outputs: bool = True,
    fsync: bool = False,
    extra: Callable[[Path, WriteResult, list[dict[str, Any]]], list[dict[str, Any]]] | None = None,
) -> dict[str, Any]:
    """Write one complete output model directory inside an atomic temp dir; return its
    provenance record.

    ``extra(tmp, written, files)`` may write more files into the directory before the
    provenance is built (pruning's ghost operators, index and rewritten config) and returns
    the weight-file records to list in it."""
    paths = [c.path for c in inputs.values()]
    target = check_output_target(out, force=force, inputs=paths)
    total = sum(t.nbytes for t in tensors)
    with atomic_dir(target, force=force, inputs=paths) as tmp:
        with byte_progress(total, desc, progress) as bar:
            res = write_checkpoint(
                tmp,
                tensors,
                max_shard_bytes=max_shard_bytes or default_shard_bytes(sidecars_from),
                progress=bar.update,
                hash_outputs=hash_outputs,
                fsync=fsync,
            )
        files = res.as_json()
        copy_sidecars(sidecars_from, tmp)
        if extra is not None:
            files = extra(tmp, res, files)
        (tmp / RECIPE_NAME).write_text(dump_recipe(operation, recipe))
        prov = build_provenance(
            operation,
            inputs={role: c.fingerprint(hash_inputs) for role, c in inputs.items()},
            outputs=files,
            details=details,
            command=command,
        )
        write_provenance(tmp, prov)
        write_model_card(tmp, model_card(title, summary, prov))
    return prov
