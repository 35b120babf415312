"""Text for calibration and evaluation: reading it, tokenising it, cutting it into batches.

Why shared: pruning calibrates on text, perplexity evaluates on text, and the perplexity sweep
proxy scores hybrids on text; all three must refuse the same bad files with the same
one-line errors and count tokens the same way. The bundled files (public-domain prose, see
``data/text/README.md``) are the defaults when a user gives none.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from layergraft.errors import InputError
from layergraft.jsonl import json_lines

log = logging.getLogger(__name__)

DATA_DIR = Path(__file__).parent / "data" / "text"
#: the bundled calibration text (pruning fits, block scores)
DEFAULT_CALIB = DATA_DIR / "calib.txt"
#: the bundled held-out text (perplexity); never used for calibration
DEFAULT_HELDOUT = DATA_DIR / "heldout.txt"

#: fewest calibration tokens we accept at all (below this no statistic means anything)
MIN_TOKENS = 16


@dataclass
class Batch:
    """One calibration batch: token ids and the padding mask (1 = real token)."""

    input_ids: Any
    attention_mask: Any

    @property
    def n_tokens(self) -> int:
        return int(self.attention_mask.sum())


def read_text(path: str | Path, what: str = "calibration") -> str:
    """Text of a ``.txt`` file, or the ``text`` fields of a ``.jsonl`` file, validated;
    or, for ``hf:NAME[:CONFIG][@SPLIT]``, the ``text`` column of a Hugging Face dataset (when
    the hub or its cache is reachable).

    Refuses missing, empty and binary files with a one-line :class:`InputError`.
    """
    if str(path).startswith("hf:"):
        return _read_hf_dataset(str(path)[3:], what)
    p = Path(path)
    if not p.is_file():
        raise InputError(
            f"{what} data {p} not found; give a local .txt or .jsonl file (one 'text' field per line)"
        )
    raw = p.read_bytes()
    if b"\x00" in raw[:65536]:
        raise InputError(f"{what} data {p} is binary, not text; give a UTF-8 .txt or .jsonl file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(
            f"{what} data {p} is not UTF-8 text (byte {e.start}); convert it to UTF-8"
        ) from e
    if p.suffix.lower() in (".jsonl", ".json"):
        parts = []
        for k, obj in json_lines(
            text, f"{what} data {p}", "write one object with a 'text' field per line"
        ):
            if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                raise InputError(
                    f"{what} data {p} line {k} has no string 'text' field; add one per line"
                )
            parts.append(obj["text"])
        text = "\n\n".join(parts)
    if not text.strip():
        raise InputError(f"{what} data {p} is empty; give a file with some text in it")
    return text


def _read_hf_dataset(spec: str, what: str) -> str:
    """``NAME[:CONFIG][@SPLIT]`` (split default ``train``) via ``datasets.load_dataset``."""
    name, _, split = spec.partition("@")
    name, _, config = name.partition(":")
    try:
        import datasets
    except ImportError as e:
        raise InputError(
            f"{what} data hf:{spec} needs the datasets package; pip install datasets"
        ) from e
    try:
        ds = datasets.load_dataset(name, config or None, split=split or "train")
    except Exception as e:  # offline, missing, gated: all mean "not reachable from here"
        raise InputError(
            f"{what} data hf:{spec} could not be loaded ({type(e).__name__}); the hub may be unreachable - "
            "give a local .txt or .jsonl file instead"
        ) from e
    if "text" not in ds.column_names:
        raise InputError(
            f"{what} data hf:{spec} has no 'text' column (columns: {', '.join(ds.column_names)})"
        )
    text = "\n\n".join(t for t in ds["text"] if isinstance(t, str))
    if not text.strip():
        raise InputError(f"{what} data hf:{spec} is empty")
    return text


def tokenize(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` as the tokenizer encodes a document (its BOS once, if it adds one)."""
    # verbose=False: a whole document is longer than model_max_length by design (it is cut
    # into rows afterwards), so transformers' "sequence too long" warning is noise here
    return list(tokenizer(text, add_special_tokens=True, verbose=False)["input_ids"])


def text_batches(
    tokenizer: Any,
    text: str,
    *,
    n_tokens: int,
    seqlen: int,
    batch_size: int,
    what: str = "calibration",
) -> list[Batch]:
    """Cut the first ``n_tokens`` tokens of ``text`` into rows of ``seqlen`` and batch them.

    The last row may be shorter: it is right-padded and masked out, never dropped, so every
    requested token counts. Raises :class:`InputError` when the text has fewer than
    :data:`MIN_TOKENS` tokens.
    """
    import torch

    if seqlen < 2 or batch_size < 1 or n_tokens < 1:
        raise InputError(
            f"need --seqlen >= 2, --batch-size >= 1 and a positive token count (got {seqlen}, {batch_size}, {n_tokens})"
        )
    ids = tokenize(tokenizer, text)
    if len(ids) < MIN_TOKENS:
        raise InputError(
            f"{what} text has only {len(ids)} tokens (need at least {MIN_TOKENS}); give a longer file"
        )
    if len(ids) < n_tokens:
        log.warning(
            "%s text has %d tokens, fewer than the %d asked for; using all of them",
            what,
            len(ids),
            n_tokens,
        )
    ids = ids[:n_tokens]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    rows = [ids[i : i + seqlen] for i in range(0, len(ids), seqlen)]
    batches = []
    for i in range(0, len(rows), batch_size):
        chunk = rows[i : i + batch_size]
        width = max(len(r) for r in chunk)
        inp = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for k, r in enumerate(chunk):
            inp[k, : len(r)] = torch.tensor(r, dtype=torch.long)
            mask[k, : len(r)] = 1
        batches.append(Batch(inp, mask))
    return batches
