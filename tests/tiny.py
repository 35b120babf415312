"""Tiny random models of every supported family, for tests.

Why the real transformers config classes (not hand-written dicts): the point of these models
is to catch what transformers *actually* does (tensor names, conversion mappings, config
validation of ``layer_types``), so they must come from the same code path a user's model does.
Sizes are tiny (hidden 32, 4 heads, vocab 128) so building and saving all families takes
about a second. No downloads: everything is built from configs.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

FAMILIES: list[str] = [
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "gemma",
    "gemma2",
    "gemma3_text",
    "phi3",
    "gpt2",
    "gpt_neox",
    "olmo2",
]

VOCAB = 128
HIDDEN = 32

# common kwargs of the Llama-like families; special token ids inside the tiny vocab
_DECODER: dict[str, Any] = dict(
    hidden_size=HIDDEN,
    intermediate_size=64,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=VOCAB,
    max_position_embeddings=128,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)

_FAMILY_KWARGS: dict[str, dict[str, Any]] = {
    "llama": dict(_DECODER),
    "mistral": dict(_DECODER, sliding_window=None),
    "qwen2": dict(_DECODER),
    "qwen3": dict(_DECODER, head_dim=8),
    "gemma": dict(_DECODER, head_dim=8),
    # small windows so that sliding attention actually matters in short generations
    "gemma2": dict(_DECODER, head_dim=8, sliding_window=4, query_pre_attn_scalar=8),
    "gemma3_text": dict(
        _DECODER, head_dim=8, sliding_window=4, query_pre_attn_scalar=8, sliding_window_pattern=2
    ),
    "phi3": dict(_DECODER),
    "gpt2": dict(
        n_embd=HIDDEN, n_head=4, vocab_size=VOCAB, n_positions=128, bos_token_id=1, eos_token_id=2
    ),
    "gpt_neox": dict(
        hidden_size=HIDDEN,
        intermediate_size=64,
        num_attention_heads=4,
        vocab_size=VOCAB,
        max_position_embeddings=128,
        bos_token_id=1,
        eos_token_id=2,
    ),
    "olmo2": dict(_DECODER),
}


def _config_class(family: str) -> Any:
    import transformers as T

    return {
        "llama": T.LlamaConfig,
        "mistral": T.MistralConfig,
        "qwen2": T.Qwen2Config,
        "qwen3": T.Qwen3Config,
        "gemma": T.GemmaConfig,
        "gemma2": T.Gemma2Config,
        "gemma3_text": T.Gemma3TextConfig,
        "phi3": T.Phi3Config,
        "gpt2": T.GPT2Config,
        "gpt_neox": T.GPTNeoXConfig,
        "olmo2": T.Olmo2Config,
    }[family]


def config_class(family: str) -> Any:
    """The transformers config class of ``family`` (for rebuilding a sliced config)."""
    return _config_class(family)


def tiny_config(family: str, num_layers: int = 4, **overrides: Any) -> Any:
    """A tiny config of the real transformers class; ``overrides`` win over the defaults."""
    if family not in _FAMILY_KWARGS:
        raise ValueError(f"unknown tiny family {family!r}; choose from {FAMILIES}")
    kw = dict(_FAMILY_KWARGS[family])
    kw["n_layer" if family == "gpt2" else "num_hidden_layers"] = num_layers
    kw.update(overrides)
    return _config_class(family)(**kw)


def make_tiny(family: str, num_layers: int = 4, seed: int = 0, **overrides: Any) -> Any:
    """A deterministic random float32 causal LM in eval mode (same seed -> same weights)."""
    import torch
    from transformers import AutoModelForCausalLM

    config = tiny_config(family, num_layers, **overrides)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model.eval()


def save_tiny(
    family: str,
    path: str | os.PathLike[str],
    num_layers: int = 4,
    seed: int = 0,
    max_shard_size: int | str | None = None,
    **overrides: Any,
) -> Path:
    """Build :func:`make_tiny` and ``save_pretrained`` it (safetensors) into ``path``.

    ``max_shard_size`` (e.g. ``"20KB"``) forces a sharded checkpoint with an index file.
    """
    model = make_tiny(family, num_layers, seed, **overrides)
    out = Path(path)
    kwargs: dict[str, Any] = {"safe_serialization": True}
    if max_shard_size is not None:
        kwargs["max_shard_size"] = max_shard_size
    # quiet: a "Writing model shards" bar on stderr would leak into tests that capture it
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(out, **kwargs)
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
    return out


def write_few_crc_prompts(path: Path, per_category: int = 4) -> Path:
    """A small CRC prompt file (the first and last ``per_category`` bundled prompts, so both
    categories), in the JSON-lines format ``--prompts`` reads: a sweep over it takes seconds."""
    import json

    from layergraft.slr.proxy.crc_prompts import load_crc_prompts

    items = load_crc_prompts("all")
    rows = [
        {"id": x.id, "category": x.category, "prompt": x.prompt, "valid": list(x.valid)}
        for x in items[:per_category] + items[-per_category:]
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


class LogitsProxy:
    """A sweep proxy whose row is the last-position logits themselves: engines that agree on
    it agree on every proxy."""

    def score(self, batch: Any, run: Any, final: Any) -> Any:
        return run.logits(final).clone()

    def combine(self, parts: list[Any]) -> dict[str, Any]:
        import torch

        return {"logits": torch.cat(parts)}


# ---- determinism helpers for tests that compare bytes or watch a running process ------------
#: the environment of a subprocess whose numbers are compared with this process's: one thread
#: for every math library (float sums change with the thread count: 3.4e-7 between 1 and 8)
ONE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


@contextlib.contextmanager
def torch_threads(n: int = 1) -> Iterator[None]:
    """This process's torch intra-op threads pinned to ``n`` (restored afterwards): the
    in-process side of a byte-identity comparison with a :data:`ONE_THREAD_ENV` subprocess."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def complete_lines(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The rows of a JSON-lines file that another process may be appending to, counting only
    the lines it has finished: a last line without its newline is still being written."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return []
    done = data[: data.rfind(b"\n") + 1]
    return [json.loads(x) for x in done.splitlines() if x.strip()]


class LoudThread(threading.Thread):
    """A helper thread whose exception fails the test: :meth:`join` re-raises it in the
    caller (an exception in a plain daemon thread dies there, and the test passes or fails
    for some other reason far away)."""

    def __init__(self, target: Callable[[], Any], name: str = "test-helper") -> None:
        super().__init__(target=target, name=name, daemon=True)
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            super().run()
        except BaseException as e:  # re-raised by join() in the test's thread
            self.error = e

    def join(self, timeout: float | None = None) -> None:
        super().join(timeout)
        if self.is_alive():
            raise AssertionError(f"helper thread {self.name} still running after {timeout} s")
        if self.error is not None:
            raise AssertionError(f"helper thread {self.name} failed") from self.error


def hand_built_hybrid(row: dict[str, Any], base: Any, post: Any) -> Any:
    """A hybrid built by hand from two checkpoints' parameters, as an independent reference
    for what restore/soup/sweep write: parameters of decoder layers [start, end) (only the
    row's part: ``attn`` = self_attn, ``mlp`` = mlp, ``norms`` = layer norms) become
    (1 - alpha) * post + alpha * base; a row without ``start`` (a whole-model soup) blends
    every parameter."""
    import torch
    from transformers import AutoModelForCausalLM

    hybrid = AutoModelForCausalLM.from_pretrained(post, dtype=torch.float32).eval()
    donor = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    alpha, parts = row.get("alpha", 1.0), row.get("parts", "all")
    marks = {"attn": ".self_attn.", "mlp": ".mlp.", "norms": "norm"}
    b = dict(donor.named_parameters())
    with torch.no_grad():
        for name, p in hybrid.named_parameters():
            if ".layers." not in name:
                in_scope = "start" not in row
            else:
                i = int(name.split(".layers.")[1].split(".")[0])
                in_scope = "start" not in row or row["start"] <= i < row["end"]
                if parts != "all":
                    in_scope = in_scope and marks[parts] in name.split(".layers.")[1]
            if in_scope:
                p.copy_((1 - alpha) * p + alpha * b[name])
    return hybrid
