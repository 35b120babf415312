"""What "the reply stops here" means for one model: its end markers, defined once.

The same ids end a generated reply (every generation: ``gen``, ``compare``, a sweep's
validation, a study's compare step, on either backend) and define CRC's format score V_end
(``crc``, ``sweep``), so a reply V_end counts as ended is one generation stops on (issue 34).

Why three sources: generation configs list ``eos_token_id`` (one id or a list: ``</s>`` and
``<|end|>`` for the toy, ``<eos>`` and ``<end_of_turn>`` for Gemma); the tokenizer names its own
end of sequence; and a chat template closes an assistant turn with its own marker
(``<|im_end|>``, ``<|eot_id|>``), which a base model's generation config does not list when the
template comes from the post model's tokenizer. A chat reply can end with any of them; the ids
and where each was found are named in results so a reader can check them.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_PROBE = "Zq7Xw"  # an assistant reply no template rewrites, to find what follows it


class EndWarning(UserWarning):
    """The model has no end marker: its replies end only at the token limit, and the format
    score V_end cannot be computed."""


@dataclass(frozen=True)
class EndMarkers:
    """Token ids that end a reply, with their text and where each was found."""

    ids: tuple[int, ...]
    tokens: tuple[str, ...] = ()
    sources: dict[str, list[int]] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"ids": list(self.ids), "tokens": list(self.tokens), "from": self.sources}


def _as_ids(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, int):
        return [value]
    return [int(v) for v in value if isinstance(v, int)]


def _checkpoint_dir(model: Any) -> Path | None:
    """The directory a loaded model was read from, when it is one on this machine."""
    for name in (
        getattr(model, "name_or_path", None),
        getattr(getattr(model, "config", None), "_name_or_path", None),
    ):
        if isinstance(name, (str, Path)) and str(name) and (Path(name) / "config.json").is_file():
            return Path(name)
    return None


def generation_eos(source: Any) -> list[int]:
    """``eos_token_id`` of a generation config: the ``generation_config.json`` (else
    ``config.json``) of a checkpoint directory, or of the directory a loaded model was read
    from; only a model built in memory is asked directly.

    Why the files even for a loaded model: transformers fills in a family's default
    (``eos_token_id=2`` for Llama) when the files have none, so a model whose eos was removed
    would report ``</s>`` when loaded and nothing when read from its path: ``crc`` (a loaded
    model) and ``sweep`` (a path) would disagree about the same checkpoint (issue 34)."""
    if source is None:
        return []
    if hasattr(source, "generation_config") or hasattr(source, "config"):
        d = _checkpoint_dir(source)
        if d is not None:
            return generation_eos(d)
        gc = getattr(source, "generation_config", None)
        ids = _as_ids(getattr(gc, "eos_token_id", None)) if gc is not None else []
        return ids or _as_ids(getattr(getattr(source, "config", None), "eos_token_id", None))
    d = Path(source)
    for name in ("generation_config.json", "config.json"):
        f = d / name
        if f.is_file():
            ids = _as_ids(json.loads(f.read_text(encoding="utf-8")).get("eos_token_id"))
            if ids:
                return ids
    return []


def tokenizer_eos(tokenizer: Any) -> list[int]:
    """The tokenizer's own end of sequence (``eos_token_id``), when it has one."""
    return _as_ids(getattr(tokenizer, "eos_token_id", None))


def template_end(tokenizer: Any) -> list[int]:
    """The token that follows an assistant message in the chat template, when it is one
    token of its own (``<|im_end|>`` after ``...<|im_start|>assistant\\nX``), else nothing."""
    if getattr(tokenizer, "chat_template", None) is None:
        return []
    try:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": _PROBE}],
            tokenize=False,
        )
    except Exception:  # a template that refuses this conversation says nothing about ends
        return []
    if not isinstance(text, str) or _PROBE not in text:
        return []
    tail = text[text.rindex(_PROBE) + len(_PROBE) :].lstrip(" ")
    if not tail.strip():
        return []
    ids = tokenizer(tail, add_special_tokens=False)["input_ids"]
    if not ids:
        return []
    first = int(ids[0])
    # a marker is a token of its own: special, or added to the vocabulary (chat tags are)
    marked = set(getattr(tokenizer, "all_special_ids", []) or [])
    marked |= set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
    return [first] if first in marked else []


def find_end_markers(tokenizer: Any, generation_source: Any = None) -> EndMarkers:
    """The model's end markers: the union of the generation config's eos ids
    (``generation_source``: a loaded model, or a checkpoint directory, see
    :func:`generation_eos`), the tokenizer's eos and the chat template's end of turn, in that
    order. An :class:`EndWarning` when there is none."""
    gen = generation_eos(generation_source)
    tok = tokenizer_eos(tokenizer)
    tpl = template_end(tokenizer)
    ids = tuple(dict.fromkeys(gen + tok + tpl))
    if not ids:
        warnings.warn(
            "this model has no end marker (no eos_token_id in its generation config or its "
            "tokenizer, no end of turn in its chat template): its replies end only at the "
            "token limit, and V_end, the format score, is unavailable",
            EndWarning,
            stacklevel=2,
        )
    tokens = tuple(tokenizer.convert_ids_to_tokens(list(ids))) if ids else ()
    return EndMarkers(
        ids,
        tuple(str(t) for t in tokens),
        {"generation_config": gen, "tokenizer": tok, "chat_template": tpl},
    )


def stop_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """The ids generation stops on: :func:`find_end_markers` of ``model`` (loaded, or its
    checkpoint directory for the vLLM backend) with ``tokenizer``."""
    return list(find_end_markers(tokenizer, model).ids)
