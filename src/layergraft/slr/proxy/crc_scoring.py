"""CRC scoring ("give a random character from this set"): prompts to packed batches,
log-probabilities to V, H and V_end.

Why this task: it has a known ideal answer distribution (uniform over the set), a one-token
answer, and a post-trained model's collapse shows in it plainly. So instead of sampling
answers we read the model's next-token distribution after the chat prompt, once per prompt:

* validity ``V`` = probability mass on tokens that decode to a valid character. A token counts
  for character ``c`` when its decoded text, with leading whitespace removed, is exactly ``c``
  (so ``" k"`` counts as ``k``); the masses of all tokens of one character are summed. A
  character no single token decodes to cannot be scored this way: it is reported with a
  :class:`CrcWarning` naming it (its mass counts as 0), never silently.
* diversity ``H`` = entropy (nats) of the per-character masses renormalised to sum to 1, and
  ``H_norm = H / log|S|`` (1 = uniform over the set, 0 = one character always).

* format ``V_end`` = probability that the reply is one valid character and then ends:
  ``sum over valid tokens t of p(t | x) * p(end | x, t)``, where "end" is any of the model's
  end markers, the ids its generation stops on (:mod:`layergraft.gen.ends`). CRC's first
  token cannot see whether a hybrid still stops; V_end can, exactly, from one more position
  per valid token. With
  ``v_end="closers"`` a closing mark before the end also counts:
  ``+ sum over closers q of p(t | x) * p(q | x, t) * p(end | x, t, q)`` (:data:`CLOSERS`:
  ".", "!" and newlines, each a token of its own). With ``"off"``, or for a model without
  an end marker, V_end is None (unavailable).

Prompts are data (:mod:`layergraft.slr.proxy.crc_prompts`). Batches are packed token trees
(:mod:`layergraft.models.packing`): each prompt's positions are those it has alone, so a
prompt scores the same alone and in any batch. The estimators use these pieces:
:mod:`layergraft.slr.proxy.crc` (exact; also the sweep's :class:`CrcProxy`) and
:mod:`layergraft.slr.proxy.crc_sampled`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from layergraft.errors import InputError
from layergraft.models.batching import left_pad
from layergraft.models.packing import Packed, PackItem, pack
from layergraft.models.runner import Reads
from layergraft.slr.proxy.crc_prompts import CrcPrompt, parse_prompt
from layergraft.slr.proxy.ends import check_v_end

#: how V_end is defined (module doc); "off" skips it
#: a continuation is read only where the reply so far is at least this likely (score_items)
MIN_READ = 1e-7
#: the most of a packed forward's positions that may be padding (rows of unequal length)
MAX_PADDING = 0.05
#: texts of the closing tokens that ``v_end="closers"`` lets stand between the character and
#: the end marker
CLOSERS = (".", "!", "\n", ".\n", "!\n", "\n\n")


class CrcWarning(UserWarning):
    """A CRC prompt cannot be scored as asked (a valid character with no single-token form)."""


@dataclass
class CrcItem:
    """Scores of one prompt: ``validity`` in [0, 1], ``entropy`` in nats, ``entropy_norm`` in [0, 1].

    ``probs`` maps each valid character to its (un-renormalised) next-token probability;
    ``validity_end`` (V_end) and ``end_probs`` (per character: it, then the end) are None
    when V_end is not computed.
    """

    id: str
    category: str
    validity: float
    entropy: float
    entropy_norm: float
    probs: dict[str, float]
    validity_end: float | None = None
    end_probs: dict[str, float] | None = None


@dataclass
class CrcResult:
    """Per-prompt scores plus means overall and per category
    (``{"V":..,"H":..,"H_norm":..,"V_end":..}``; V_end None when not computed)."""

    items: list[CrcItem]
    mean: dict[str, float]
    by_category: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (results are data: reports are rendered from this)."""
        return asdict(self)


# ---------------------------------------------------------------------------- encoding


#: characters tokenizers use to stand for leading whitespace in a token's raw form
#: (SentencePiece "▁", byte-level BPE "Ġ"/"Ċ"/"ĉ" for space, newline, tab)
_WS_MARKS = " \t\n\r▁ĠĊĉ"
#: the longest raw form of one character besides leading whitespace: 4 (byte-level BPE
#: writes each UTF-8 byte as a character, and a character has at most 4 bytes)
_MAX_CORE = 4


def _candidates(tokenizer: Any) -> list[int]:
    """Token ids that *can* decode to (whitespace +) one character: after their leading
    whitespace marks, at most 4 characters, or a byte-fallback token (``<0x61>``). Decoding
    only these gives the same answer as decoding every token (a test checks it on the toy and
    real tokenizers) in a fraction of the time on a large vocabulary."""
    raw = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    keep = []
    for i, t in enumerate(raw):
        core = str(t).lstrip(_WS_MARKS) if t is not None else ""
        if t is None or len(core) <= _MAX_CORE or (len(core) == 6 and core.startswith("<0x")):
            keep.append(i)
    return keep


def _text_token_ids(
    tokenizer: Any, texts: set[str], *, strip: bool = True, exhaustive: bool = False
) -> dict[str, list[int]]:
    """Token ids whose decoded text (minus leading whitespace with ``strip``) is exactly one
    of ``texts``; special tokens never count. Only the candidate tokens (:func:`_candidates`)
    are decoded unless ``exhaustive``."""
    out: dict[str, list[int]] = {c: [] for c in texts}
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    ids = list(range(len(tokenizer))) if exhaustive else _candidates(tokenizer)
    decoded = tokenizer.batch_decode([[i] for i in ids], clean_up_tokenization_spaces=False)
    for i, text in zip(ids, decoded, strict=True):
        if i in special:
            continue
        key = text.lstrip() if strip else text
        if key in out:
            out[key].append(i)
    return out


def _char_token_ids(
    tokenizer: Any, chars: set[str], exhaustive: bool = False
) -> dict[str, list[int]]:
    """Token ids whose decoded text, minus leading whitespace, is exactly one of ``chars``;
    a :class:`CrcWarning` names every character that has none."""
    out = _text_token_ids(tokenizer, chars, exhaustive=exhaustive)
    missing = sorted(c for c, found in out.items() if not found)
    if missing:
        warnings.warn(
            f"CRC: no single token of this tokenizer decodes to {', '.join(map(repr, missing))}; "
            "their probability counts as 0, which lowers V — use valid sets of characters the "
            "tokenizer has as single tokens",
            CrcWarning,
            stacklevel=3,
        )
    return out


def _as_prompts(prompts: Sequence[CrcPrompt | dict[str, Any]]) -> list[CrcPrompt]:
    out = []
    for n, p in enumerate(prompts, 1):
        out.append(p if isinstance(p, CrcPrompt) else parse_prompt(p, "prompts", n))
    return out


@dataclass
class CrcBatch:
    """CRC prompts packed as token trees (:mod:`layergraft.models.packing`), with every valid
    character's token ids and, for V_end, the end markers and closing tokens.

    Each prompt's tree holds, below its answer slot, one branch per token of a valid
    character (the position after "prompt + that token") and, with ``closers``, one more per
    closing token below it: the positions whose next-token distributions V_end reads."""

    prompts: list[CrcPrompt]
    packed: Packed
    char_ids: dict[str, list[int]]
    ends: tuple[int, ...] = ()
    closers: tuple[int, ...] = ()
    index: list[int] = field(default_factory=list)  # each prompt's place in the whole set
    _reads: Reads | None = field(default=None, repr=False)

    def answer_tokens(self, p: CrcPrompt) -> list[int]:
        return sorted({t for c in p.valid for t in self.char_ids[c]})

    def answer_reads(self) -> Reads:
        """Every prompt's answer slot and the tokens of its valid characters (built once)."""
        if self._reads is None:
            self._reads = Reads.of(
                [self.packed.answer[k] for k in range(len(self.prompts))],
                [self.answer_tokens(p) for p in self.prompts],
                device=self.packed.input_ids.device,
            )
        return self._reads


def encode_chat(tokenizer: Any, prompt: str) -> list[int]:
    """The chat-template encoding of one user prompt, ending where the reply starts."""
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True
    )
    if isinstance(ids, dict) or hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return list(ids)


def _check(tokenizer: Any, items: list[CrcPrompt], batch_size: int) -> None:
    if not items:
        raise InputError("no CRC prompts to score; load a set with load_crc_prompts()")
    if batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, not {batch_size}")
    if getattr(tokenizer, "chat_template", None) is None:
        raise InputError(
            "the tokenizer has no chat template; CRC scores a chat model's reply - use a tokenizer "
            "with a chat_template (e.g. the post-trained model's, with --tokenizer)"
        )


def pad_id_of(tokenizer: Any) -> int:
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    return int(pad_id)


def closer_ids(tokenizer: Any) -> tuple[int, ...]:
    """Tokens whose text is exactly a closing mark (:data:`CLOSERS`): a reply "k." or "k\n"
    followed by the end marker counts towards V_end with ``v_end="closers"``."""
    found = _text_token_ids(tokenizer, set(CLOSERS), strip=False)
    return tuple(sorted(i for ids in found.values() for i in ids))


def prepare_batches(
    tokenizer: Any,
    prompts: Sequence[CrcPrompt | dict[str, Any]],
    *,
    batch_size: int = 64,
    device: Any = None,
    ends: Sequence[int] = (),
    v_end: str = "strict",
    layout: str = "shared",
    attention_ratio: float | None = None,
) -> list[CrcBatch]:
    """Chat-encode the prompts and pack every ``batch_size`` of them into token-tree rows
    (character ids are found once for all), the rows into :class:`CrcBatch` es that pad at
    most :data:`MAX_PADDING` of what they compute. ``ends`` (the model's end markers) with
    ``v_end`` ``"strict"`` or ``"closers"`` adds the V_end branches; ``layout``: see
    :data:`~layergraft.models.packing.LAYOUTS`."""
    items = _as_prompts(prompts)
    _check(tokenizer, items, batch_size)
    check_v_end(v_end)
    char_ids = _char_token_ids(tokenizer, {c for p in items for c in p.valid})
    ends = tuple(ends) if v_end != "off" else ()
    closers = closer_ids(tokenizer) if ends and v_end == "closers" else ()
    batches = []
    for i in range(0, len(items), batch_size):
        chunk = items[i : i + batch_size]
        pack_items = []
        for p in chunk:
            toks = sorted({t for c in p.valid for t in char_ids[c]})
            branches = [(t,) for t in toks] if ends else []
            branches += [(t, q) for t in toks for q in closers]
            pack_items.append(PackItem(tuple(encode_chat(tokenizer, p.prompt)), tuple(branches)))
        for members, packed in pack(
            pack_items, pad_id=pad_id_of(tokenizer), layout=layout,
            attention_ratio=attention_ratio, max_padding=MAX_PADDING,
        ):  # fmt: skip
            batches.append(
                CrcBatch([chunk[k] for k in members], packed.to(device), char_ids, ends, closers,
                         index=[i + k for k in members])
            )  # fmt: skip
    return batches


def left_padded(
    tokenizer: Any, prompts: Sequence[CrcPrompt], device: Any = None
) -> tuple[Any, Any]:
    """``(input_ids, attention_mask)`` of the chat-encoded prompts, left-padded: what the
    sampled estimator generates from."""
    _check(tokenizer, list(prompts), 1)
    input_ids, mask = left_pad(
        [encode_chat(tokenizer, p.prompt) for p in prompts], pad_id_of(tokenizer)
    )
    if device is not None:
        input_ids, mask = input_ids.to(device), mask.to(device)
    return input_ids, mask


def score_items(batch: CrcBatch, read: Any, min_read: float = MIN_READ) -> list[CrcItem]:
    """V, H and V_end of every prompt of ``batch``. ``read(slots, ids)`` returns the
    float64 log-probabilities of ``ids[k]`` at ``slots[k]`` (flat, in order), or
    ``read(None, None)`` those of :meth:`CrcBatch.answer_reads`.

    Reading is staged: first every answer slot; then the position after each valid token
    ``t`` whose probability ``p(t | x)`` is at least :data:`MIN_READ` (below it, ``t``'s
    share of V_end is below it too, so skipping it moves V_end by less than ``MIN_READ`` per
    token); then, with closers, the position after ``t q`` where ``p(t | x) p(q | x, t)`` is
    at least :data:`MIN_READ`. On a large vocabulary every position read costs a full
    lm_head, so this is what keeps V_end affordable. ``min_read=0`` reads every continuation
    (what a sweep's plan times as the upper bound of a diverse hybrid's head)."""
    import torch

    def probs(slots: Any, ids: Any) -> list[float]:
        return torch.exp(read(slots, ids).double()).tolist() if slots != [] else []

    flat = iter(probs(None, None))
    firsts: list[dict[int, float]] = []
    for p in batch.prompts:
        toks = batch.answer_tokens(p)
        firsts.append({t: next(flat) for t in toks})
    after: list[dict[int, float]] = [dict.fromkeys(f, 0.0) for f in firsts]
    if batch.ends:
        n_end = len(batch.ends)
        need = [(k, t) for k, f in enumerate(firsts) for t, pt in f.items() if pt >= min_read]
        got = iter(probs(
            [batch.packed.branch[k][(t,)] for k, t in need],
            [list(batch.ends) + list(batch.closers)] * len(need),
        ))  # fmt: skip
        deeper: list[tuple[int, int, int, float]] = []
        for k, t in need:
            follow = [next(got) for _ in range(n_end + len(batch.closers))]
            after[k][t] = sum(follow[:n_end])
            for q, pq in zip(batch.closers, follow[n_end:], strict=True):
                if firsts[k][t] * pq >= min_read:
                    deeper.append((k, t, q, pq))
        got = iter(probs(
            [batch.packed.branch[k][(t, q)] for k, t, q, _ in deeper],
            [list(batch.ends)] * len(deeper),
        ))  # fmt: skip
        for k, t, _, pq in deeper:
            after[k][t] += pq * sum(next(got) for _ in range(n_end))
    items: list[CrcItem] = []
    for p, first, stop in zip(batch.prompts, firsts, after, strict=True):
        mass = {c: sum(first[t] for t in batch.char_ids[c]) for c in p.valid}
        end_mass = (
            {c: sum(first[t] * stop[t] for t in batch.char_ids[c]) for c in p.valid}
            if batch.ends
            else None
        )
        items.append(item_scores(p, mass, end_mass))
    return items


def reader(run: Any, final: Any, batch: CrcBatch) -> Any:
    """The ``read`` of :func:`score_items` for a model's final hidden states on ``batch``."""

    def read(slots: Any, ids: Any) -> Any:
        if slots is None:
            return run.log_probs(final, batch.answer_reads())
        return run.log_probs(final, Reads.of(slots, ids, device=final.device))

    return read


def item_scores(
    p: CrcPrompt, mass: dict[str, float], end_mass: dict[str, float] | None = None
) -> CrcItem:
    """V, H and H_norm of one prompt from the probability mass on each valid character (and
    V_end from the mass of "that character, then the end", when given)."""
    v = sum(mass.values())
    h = 0.0
    if v > 0:
        for m in mass.values():
            if m > 0:
                q = m / v
                h -= q * math.log(q)
    h_norm = h / math.log(len(p.valid)) if len(p.valid) > 1 else 0.0
    v_end = sum(end_mass.values()) if end_mass is not None else None
    return CrcItem(p.id, p.category, v, h, h_norm, mass, v_end, end_mass)


def _summary(items: Sequence[CrcItem]) -> dict[str, Any]:
    n = max(len(items), 1)
    ends = [i.validity_end for i in items]
    return {
        "V": sum(i.validity for i in items) / n,
        "H": sum(i.entropy for i in items) / n,
        "H_norm": sum(i.entropy_norm for i in items) / n,
        "V_end": None if any(e is None for e in ends) or not items else sum(ends) / n,  # type: ignore[arg-type]
        "n": len(items),
    }


def in_order(parts: Sequence[tuple[CrcBatch, list[CrcItem]]]) -> list[CrcItem]:
    """Per-prompt scores of several batches back in the prompts' own order (packing groups
    prompts by their tokens; the means must not depend on how)."""
    pairs = [(i, item) for b, items in parts for i, item in zip(b.index, items, strict=True)]
    return [item for _, item in sorted(pairs, key=lambda p: p[0])]


def result_of(items: list[CrcItem]) -> CrcResult:
    """Means overall and per category of per-prompt scores (in prompt order)."""
    cats = sorted({i.category for i in items})
    return CrcResult(
        items=items,
        mean=_summary(items),
        by_category={c: _summary([i for i in items if i.category == c]) for c in cats},
    )
