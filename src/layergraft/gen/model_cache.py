"""Models for a comparison: each loaded when first needed, freed when the next is needed."""

from __future__ import annotations

import gc
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from layergraft.errors import InputError
from layergraft.gen.records import default_model_name, weights_digest
from layergraft.gen.vllm import VllmEngine
from layergraft.models.load import load_model, load_tokenizer, local_dir

log = logging.getLogger(__name__)


class ModelCache:
    """Loads each model when first needed and frees it when another one is needed.

    Why one at a time: comparing four 8B models must not need four models' memory. In-memory
    models are the caller's and are only referenced. A model whose tokenizer has no chat
    template (a base model) borrows the given ``tokenizer`` or the baseline (post) model's:
    the paper samples base and hybrids in the post model's chat format.
    """

    def __init__(
        self,
        models: Mapping[str, Any],
        tokenizer: Any,
        baseline_model: str,
        chat_template: bool,
        placement: dict[str, Any],
    ) -> None:
        self.models, self.shared_tok, self.baseline = models, tokenizer, baseline_model
        self.chat_template, self.placement = chat_template, placement
        self.current: tuple[str, str, Any] | None = None  # (label, kind, object)
        self.toks: dict[str, Any] = {}
        self.digests: dict[str, str | None] = {}

    def record_name(self, label: str) -> str:
        spec = self.models[label]
        return f"{label}:{'in-memory' if isinstance(spec, tuple) else default_model_name(spec)}"

    def weights(self, label: str) -> str | None:
        """:func:`weights_digest` of ``label``'s checkpoint (None in memory), read once."""
        if label not in self.digests:
            spec = self.models[label]
            self.digests[label] = None if isinstance(spec, tuple) else weights_digest(spec)
        return self.digests[label]

    def _path(self, label: str) -> Path:
        return local_dir(self.models[label])

    def tokenizer(self, label: str) -> Any:
        if label not in self.toks:
            spec = self.models[label]
            tok = load_tokenizer(spec[1] if isinstance(spec, tuple) else self._path(label))
            if self.chat_template and not getattr(tok, "chat_template", None):
                if self.shared_tok is not None:
                    tok = load_tokenizer(self.shared_tok)
                elif label != self.baseline and self.baseline in self.models:
                    tok = self.tokenizer(self.baseline)
                else:
                    raise InputError(
                        f"model {label!r} has no chat template; pass --tokenizer DIR (e.g. the post model's)"
                    )
                if not getattr(tok, "chat_template", None):
                    raise InputError(
                        f"model {label!r} has no chat template, nor has the tokenizer it would borrow; pass --tokenizer DIR"
                    )
                log.warning("model %r has no chat template; using another tokenizer's", label)
            self.toks[label] = tok
        return self.toks[label]

    def _switch(self, label: str, kind: str, make: Any) -> Any:
        if self.current is not None and self.current[:2] == (label, kind):
            return self.current[2]
        self.release()
        obj = make()
        self.current = (label, kind, obj)
        return obj

    def hf(self, label: str) -> tuple[Any, Any]:
        """The transformers model and tokenizer of ``label``."""
        spec = self.models[label]
        tok = self.tokenizer(label)
        if isinstance(spec, tuple):
            return spec[0], tok
        return self._switch(label, "hf", lambda: load_model(spec, **self.placement)), tok

    def vllm(self, label: str) -> Any:
        return self._switch(label, "vllm", lambda: VllmEngine(str(self._path(label))))

    def release(self) -> None:
        """Drop the current model (and the accelerator's cached memory)."""
        if self.current is None:
            return
        self.current = None
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:  # pragma: no cover
            pass
