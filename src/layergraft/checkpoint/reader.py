"""Opening a model checkpoint: local directory, hub id, or ``.gguf`` file.

Why a class of our own instead of ``from_pretrained``: surgery must see a checkpoint as
*tensors on disk* (name -> file, byte range, dtype, shape) without materialising the model,
and must reject a broken checkpoint (missing shard, truncated file, corrupted header) with a
one-line error before it starts writing anything. Every source ends up as a local directory
of safetensors: a hub id is resolved through the local cache or a download, a ``.gguf`` file
is dequantised once through transformers' gguf support into a cache directory, and a
pickle-only checkpoint (refused unless ``allow_pickle``) is converted the same way.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from layergraft.arch import ModelAdapter, adapter_for
from layergraft.arch.spec import spec_for
from layergraft.checkpoint.convert import gguf_to_dir, pickle_to_dir
from layergraft.checkpoint.finite import SCANNED_DTYPES, has_nonfinite, nonfinite_error
from layergraft.checkpoint.format import SafetensorsHeader, TensorEntry, iter_blocks, read_header
from layergraft.checkpoint.layout import INDEX_NAME, PICKLE_NAMES, SIDECAR_PATTERNS, SINGLE_NAME
from layergraft.errors import InputError

log = logging.getLogger(__name__)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


@dataclass
class Checkpoint:
    """A validated local checkpoint directory.

    ``tensors`` maps every tensor name to where its bytes are; nothing is loaded until
    :meth:`get_tensor` is called, and then one tensor at a time.
    """

    path: Path
    config: dict[str, Any]
    weight_files: list[Path]
    headers: dict[Path, SafetensorsHeader]
    tensors: dict[str, TensorEntry]
    source: str = "local"  # local | hub | gguf | pickle
    origin: str = ""  # what the user gave (path, hub id, gguf file)
    notes: list[str] = field(default_factory=list)

    @cached_property
    def adapter(self) -> ModelAdapter:
        return adapter_for(self.config, self.tensors.keys(), where=str(self.origin or self.path))

    @property
    def sharded(self) -> bool:
        return (self.path / INDEX_NAME).exists()

    @cached_property
    def tokenizer_config(self) -> dict[str, Any]:
        p = self.path / "tokenizer_config.json"
        if not p.exists():
            return {}
        try:
            return json.loads(p.read_text())
        except (OSError, ValueError):
            return {}

    @property
    def has_chat_template(self) -> bool:
        return bool(
            self.tokenizer_config.get("chat_template")
            or (self.path / "chat_template.jinja").exists()
            or (self.path / "chat_template.json").exists()
        )

    def sidecar_files(self) -> list[Path]:
        """Non-weight files that describe the model (config, tokenizer, chat template)."""
        return [self.path / n for n in SIDECAR_PATTERNS if (self.path / n).is_file()]

    def get_tensor(self, name: str) -> Any:
        """Load one tensor (torch) lazily through ``safe_open``."""
        from safetensors import safe_open

        entry = self.tensors[name]
        with safe_open(str(entry.file), framework="pt") as f:
            return f.get_tensor(name)

    def check_finite(self) -> None:
        """Refuse a checkpoint holding NaN or Inf in any floating tensor
        (:class:`~layergraft.errors.NonFiniteError`, naming tensor and file).

        Why: commands that compute on the weights (prune fits operators on activations) would
        otherwise fail deep inside a linear solve, or silently fit to NaN. This reads every
        floating tensor once, in blocks, with the same exponent-bit scan the writer uses;
        commands that only copy bytes (restore) scan in their hashing pass instead.
        """
        floats = (e for e in self.tensors.values() if e.dtype in SCANNED_DTYPES)
        for entry, block in iter_blocks(sorted(floats, key=lambda e: (str(e.file), e.offset))):
            if has_nonfinite(block, entry.dtype):
                raise nonfinite_error(entry.name, entry.dtype, block, entry.file)

    def fingerprint(self, full_hash: bool = False) -> dict[str, Any]:
        """Identify the input weights for provenance.

        By default: size, mtime, the sha256 of each safetensors header (any change of
        names/shapes/dtypes changes it) and of a sample of each tensor's bytes (a model
        trained again keeps its header; see ``SafetensorsHeader.sample_sha256``); files that
        live in a Hugging Face cache blob named by its sha256 get that for free.
        ``full_hash`` reads every byte.
        """
        files = []
        for wf in self.weight_files:
            st = wf.stat()
            rec: dict[str, Any] = {
                "name": wf.name,
                "size": st.st_size,
                "mtime": int(st.st_mtime),
                "header_sha256": self.headers[wf].header_sha256(),
                "sample_sha256": self.headers[wf].sample_sha256(),
            }
            blob = wf.resolve().name
            if wf.is_symlink() and re.fullmatch(r"[0-9a-f]{64}", blob):
                rec["sha256"] = blob
            elif full_hash:
                rec["sha256"] = sha256_file(wf)
            files.append(rec)
        return {
            "path": str(self.path),
            "origin": self.origin or str(self.path),
            "source": self.source,
            "files": files,
        }


def sha256_file(path: Path, chunk: int = 8 * 1024 * 1024) -> str:
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(chunk)
        view = memoryview(buf)
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


# ----------------------------------------------------------------------------- opening


def open_checkpoint(
    spec: str | os.PathLike[str],
    *,
    allow_pickle: bool = False,
    revision: str | None = None,
    validate_arch: bool = True,
) -> Checkpoint:
    """Open ``spec`` (a directory, a hub id or a ``.gguf`` file) as a validated Checkpoint.

    Raises :class:`InputError` with a fix for every way a checkpoint can be unusable.
    """
    text = os.fspath(spec)
    p = Path(text).expanduser()
    if p.is_file() and p.suffix == ".gguf":
        ck = _open_dir(gguf_to_dir(p), allow_pickle=False)
        ck.source, ck.origin = "gguf", str(p)
    elif p.exists():
        if not p.is_dir():
            raise InputError(
                f"{p} is a file, not a model; give a model directory (with config.json and *.safetensors) or a .gguf file"
            )
        ck = _open_dir(p, allow_pickle=allow_pickle)
    elif _HUB_ID.match(text) and not text.startswith((".", "/", "~")):
        ck = _open_dir(_hub_to_dir(text, revision), allow_pickle=allow_pickle)
        ck.source, ck.origin = "hub", text
    else:
        raise InputError(
            f"{text}: no such file or directory; give a model directory, a .gguf file or a hub id (org/name)"
        )
    if validate_arch:
        _ = ck.adapter  # resolve (and validate) the architecture now, not mid-write
    return ck


def as_checkpoint(x: str | os.PathLike[str] | Checkpoint, allow_pickle: bool = False) -> Checkpoint:
    """An opened checkpoint as is, or a path / hub id / ``.gguf`` opened and validated."""
    return x if isinstance(x, Checkpoint) else open_checkpoint(x, allow_pickle=allow_pickle)


def _read_config(path: Path) -> dict[str, Any]:
    cfg = path / "config.json"
    if not cfg.is_file():
        hint = "it looks empty" if not any(path.iterdir()) else "no config.json in it"
        raise InputError(
            f"{path} is not a model directory ({hint}); point to a directory saved with save_pretrained"
        )
    try:
        obj = json.loads(cfg.read_text())
    except PermissionError as e:
        raise InputError(f"{cfg}: cannot read ({e.strerror}); fix the file permissions") from e
    except (OSError, ValueError) as e:
        raise InputError(f"{cfg}: unreadable or invalid JSON ({e}); re-save the model") from e
    if not isinstance(obj, dict):
        raise InputError(f"{cfg}: not a JSON object; re-save the model")
    _refuse_remote_code(path, obj)
    return obj


def _refuse_remote_code(path: Path, config: dict[str, Any]) -> None:
    """Refuse a model whose architecture exists only as code shipped with the checkpoint.

    Why: layergraft never runs a checkpoint's own Python (``trust_remote_code`` stays off),
    and neither can whoever loads the output. A config with ``auto_map`` whose model_type is
    not a family layergraft knows is such a model; layergraft's own ghosted outputs carry an
    ``auto_map`` too but are loaded without running it, so they pass. (An unknown model_type
    *without* ``auto_map`` may be a transformers-native family newer than our table: pure-IO
    commands handle it by discovery, loading commands ask transformers, see
    :func:`layergraft.models.load.require_transformers_family`.)
    """
    auto_map = config.get("auto_map")
    if not auto_map or "layergraft_ghost" in config:
        return
    mt = config.get("model_type")
    if mt and spec_for(mt) is not None:
        return  # a known family with a leftover auto_map: the native code is used
    what = f"model_type {mt!r}" if mt else "no model_type"
    raise InputError(
        f"{path}: {what} with auto_map in config.json, so the model needs its own remote code, "
        "which layergraft never runs; use a checkpoint of a transformers-native architecture"
    )


def _open_dir(path: Path, *, allow_pickle: bool) -> Checkpoint:
    path = path.absolute()
    if not os.access(path, os.R_OK | os.X_OK):
        raise InputError(f"{path}: permission denied; make the directory readable")
    config = _read_config(path)
    index = path / INDEX_NAME
    notes: list[str] = []
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            assert isinstance(weight_map, dict)
        except (OSError, ValueError, KeyError, AssertionError) as e:
            raise InputError(f"{index}: invalid index file; re-save the model") from e
        files = sorted({path / f for f in weight_map.values()})
        for f in files:
            if not f.is_file():
                raise InputError(
                    f"{index} names {f.name}, which is missing; re-download the missing shard"
                )
    elif (path / SINGLE_NAME).is_file():
        weight_map = None
        files = [path / SINGLE_NAME]
    else:
        others = sorted(path.glob("*.safetensors"))
        pickles = [n for n in PICKLE_NAMES if (path / n).exists()] or [
            p.name for p in path.glob("pytorch_model*.bin")
        ]
        if others:
            weight_map = None
            files = others
        elif pickles:
            if not allow_pickle:
                raise InputError(
                    f"{path} has only pickle weights ({pickles[0]}), which can run code when loaded; "
                    "convert to safetensors or pass --allow-pickle if you trust the source"
                )
            converted = pickle_to_dir(path)
            ck = _open_dir(converted, allow_pickle=False)
            ck.source, ck.origin = "pickle", str(path)
            return ck
        else:
            raise InputError(
                f"{path} has a config.json but no weights (*.safetensors); copy the weight files next to it"
            )
    headers = {f: read_header(f) for f in files}
    tensors: dict[str, TensorEntry] = {}
    for f, h in headers.items():
        for name, entry in h.tensors.items():
            if weight_map is not None and weight_map.get(name) != f.name:
                if name not in weight_map:
                    notes.append(f"{f.name} holds {name}, which the index does not list")
                continue
            if name in tensors:
                raise InputError(
                    f"{path}: tensor {name!r} is stored twice ({tensors[name].file.name}, {f.name}); re-save the model"
                )
            tensors[name] = entry
    if weight_map is not None:
        missing = [n for n in weight_map if n not in tensors]
        if missing:
            raise InputError(
                f"{index} lists {missing[0]!r} in {weight_map[missing[0]]}, but that shard does not hold it; re-download the checkpoint"
            )
    if not tensors:
        raise InputError(f"{path}: the weight files hold no tensors; re-save the model")
    return Checkpoint(path, config, files, headers, tensors, notes=notes, origin=str(path))


def _hub_to_dir(repo_id: str, revision: str | None) -> Path:
    """Resolve a hub id to a local snapshot: the cache first, then a download."""
    patterns = ["*.json", "*.safetensors", "*.jinja", "tokenizer*", "*.txt", "*.model"]
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:  # pragma: no cover
        raise InputError("huggingface_hub is not installed; pip install huggingface_hub") from e
    last: Exception | None = None
    for local_only in (True, False):
        try:
            return Path(
                snapshot_download(
                    repo_id, revision=revision, allow_patterns=patterns, local_files_only=local_only
                )
            )
        except Exception as e:  # every failure here is "not reachable / not found"
            last = e
    reason = type(last).__name__ if last else "unknown error"
    raise InputError(
        f"{repo_id}: not in the local Hugging Face cache and the hub is unreachable or has no such model ({reason}); "
        "download it where there is network (huggingface-cli download) and pass the local directory"
    )
