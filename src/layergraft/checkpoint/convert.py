"""Turning other checkpoint formats into safetensors directories, once, into the cache.

Why convert instead of reading them directly: every later step (restore's byte copies, the
NaN scan, provenance hashes, loading) works on one format. A ``.gguf`` file is dequantised
through transformers' gguf support, a trusted pickle checkpoint (``--allow-pickle``) is
converted with ``torch.load(weights_only=True)``; both land in :func:`~layergraft.checkpoint.layout.cache_dir`,
keyed by path, size and mtime, so the cost is paid once.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

from layergraft.checkpoint.atomic import atomic_dir, check_output_target
from layergraft.checkpoint.layout import SIDECAR_PATTERNS, cache_dir
from layergraft.checkpoint.writer import OutTensor, write_checkpoint
from layergraft.errors import InputError

log = logging.getLogger(__name__)
#: how a cache entry is named in messages: the variable that moves the cache elsewhere
CACHE_FLAG = "cache entry ($LAYERGRAFT_CACHE)"


def _file_key(path: Path) -> str:
    st = path.stat()
    return hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[
        :16
    ]


#: bumped when the conversion's output changes (2: end-of-turn stop tokens), so a cached
#: directory written by an older layergraft is converted again rather than reused
GGUF_CONVERSION = 2


def gguf_cache_path(path: Path) -> Path:
    """Where the converted directory of ``path`` is (or will be) cached."""
    return cache_dir() / "gguf" / f"{path.stem}-{_file_key(path)}-v{GGUF_CONVERSION}"


def gguf_to_dir(path: Path) -> Path:
    """Dequantise a GGUF file once into a cached safetensors directory (transformers' gguf
    support does the dequantisation), so every later step sees an ordinary checkpoint."""
    out = gguf_cache_path(path)
    if (out / "config.json").is_file():
        return out
    check_output_target(out, force=True, inputs=[path], flag=CACHE_FLAG, parents=True)
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as e:  # pragma: no cover
        raise InputError(
            "reading .gguf needs torch, transformers and gguf; pip install gguf"
        ) from e
    log.warning("dequantising %s into %s (once; later runs reuse it)", path, out)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=torch.float32
        )
    except Exception as e:  # transformers raises ValueError/KeyError/OSError for bad files
        raise InputError(
            f"{path}: cannot read this GGUF file ({type(e).__name__}: {e}); check that its architecture is supported by transformers"
        ) from e
    # transformers refuses save_pretrained on a gguf-loaded model (it counts as quantized),
    # but the dequantised weights are ordinary tensors: write them ourselves.
    config = model.config
    for attr in ("quantization_config",):
        if hasattr(config, attr):
            delattr(config, attr)
    state = model.state_dict()
    if getattr(config, "tie_word_embeddings", False):
        for name in list(state):
            if name.endswith("lm_head.weight"):
                del state[name]
    with atomic_dir(out, force=True, inputs=[path], flag=CACHE_FLAG, parents=True) as tmp:
        config.save_pretrained(tmp)
        write_checkpoint(tmp, [OutTensor.from_torch(k, v) for k, v in state.items()])
        tok = None
        try:
            tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
            tok.save_pretrained(tmp)
        except Exception as e:  # a GGUF without tokenizer metadata still gives weights
            log.warning("%s: no usable tokenizer in the GGUF file (%s)", path, e)
        gen = getattr(model, "generation_config", None)
        if gen is not None:
            if tok is not None:
                gen.eos_token_id = stop_ids(gen.eos_token_id, tok)
            gen.save_pretrained(tmp)
    return out


#: end-of-turn tokens of common chat formats: a GGUF records one EOS id, but a chat model
#: ends its turn with one of these (Gemma's <end_of_turn>, ChatML's <|im_end|>, Llama 3's
#: <|eot_id|>, Phi's <|end|>); without them generation runs to the token budget
END_OF_TURN = ("<end_of_turn>", "<|im_end|>", "<|eot_id|>", "<|end|>")


def stop_ids(eos: Any, tokenizer: Any) -> Any:
    """The EOS id(s) plus the end-of-turn tokens the vocabulary has (a list; ``eos`` itself
    when there are none)."""
    ids = [eos] if isinstance(eos, int) else list(eos or [])
    vocab = tokenizer.get_vocab()
    for name in END_OF_TURN:
        i = vocab.get(name)
        if i is not None and i not in ids:
            ids.append(i)
    return ids if len(ids) != 1 else ids[0]


def pickle_to_dir(path: Path) -> Path:
    """Convert a trusted pickle checkpoint (``--allow-pickle``) to cached safetensors."""
    out = cache_dir() / "pickle" / f"{path.name}-{_file_key(path / 'config.json')}"
    if (out / "config.json").is_file():
        return out
    check_output_target(out, force=True, inputs=[path], flag=CACHE_FLAG, parents=True)
    import shutil

    import torch

    state: dict[str, Any] = {}
    for f in sorted(path.glob("pytorch_model*.bin")):
        state.update(torch.load(f, map_location="cpu", weights_only=True, mmap=True))
    with atomic_dir(out, force=True, inputs=[path], flag=CACHE_FLAG, parents=True) as tmp:
        write_checkpoint(tmp, [OutTensor.from_torch(k, v) for k, v in state.items()])
        for side in SIDECAR_PATTERNS:
            if (path / side).is_file():
                shutil.copy2(path / side, tmp / side)
    return out
