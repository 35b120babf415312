"""What a checkpoint directory is made of: file names, and where converted inputs are cached.

Why a module of its own: the reader (which opens directories), the converters (which write
them from ``.gguf`` / pickle files) and the model-directory writer all need the same names;
keeping them here lets each of those import the names without importing each other.
"""

from __future__ import annotations

import os
from pathlib import Path

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
PICKLE_NAMES = ("pytorch_model.bin", "pytorch_model.bin.index.json")
#: files that describe a model and travel with it through surgery (config, tokenizer, ...)
SIDECAR_PATTERNS = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "preprocessor_config.json",
)


def cache_dir() -> Path:
    """Where converted checkpoints (gguf, pickle) are kept: ``$LAYERGRAFT_CACHE`` or
    ``~/.cache/layergraft``."""
    return Path(os.environ.get("LAYERGRAFT_CACHE", Path.home() / ".cache" / "layergraft"))
