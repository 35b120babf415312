"""A character-level tokenizer for the toy pair, saved as a real ``tokenizer.json``.

Why character level: the CRC proxy asks for "a random character from this set" and reads the
next-token distribution, so every answer must be exactly one token, and a vocabulary of ~100
symbols keeps the embedding matrices (and the shipped files) tiny. Why a real
``tokenizers`` file instead of a hand-written Python class: the whole toolkit loads models
with ``AutoTokenizer.from_pretrained``, and the toy pair must exercise that path, chat template
included.

The model is a BPE with no merges and no pre-tokenizer: every character of the input is its own
symbol, unknown characters map to ``<unk>``, and the ``Fuse`` decoder concatenates tokens so that
decoding round-trips text (no spaces inserted between characters).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

BOS = "<s>"
EOS = "</s>"
PAD = "<pad>"
UNK = "<unk>"
USER = "<|user|>"
ASSISTANT = "<|assistant|>"
SYSTEM = "<|system|>"
END = "<|end|>"
"""End of a chat turn; the post model stops generating on it."""

SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, EOS, UNK, SYSTEM, USER, ASSISTANT, END)
CHARS: str = "\n" + "".join(chr(c) for c in range(32, 127))
"""Newline plus printable ASCII: everything the toy corpus is normalised to."""

CHAT_TEMPLATE: str = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)
"""``<s><|user|>question<|end|><|assistant|>answer<|end|>``: no newlines, so every prompt is
short and the answer's first character is the very next token after ``<|assistant|>``."""


def build_tokenizer() -> Any:
    """Return the toy ``PreTrainedTokenizerFast`` (deterministic: same ids every time)."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in CHARS:
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        additional_special_tokens=[SYSTEM, USER, ASSISTANT, END],
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def save_tokenizer(out_dir: str | Path) -> Any:
    """Write ``tokenizer.json`` + ``tokenizer_config.json`` (with the chat template) to ``out_dir``."""
    tok = build_tokenizer()
    tok.save_pretrained(str(out_dir))
    return tok
