"""Shared bits of the Gemma-3-270M experiment: paths, the chat template, resource logging.

Why a shared module: base and post must carry the *same* chat template, and every stage
must record its wall time and peak RSS the same way (TRIALS.md compares them).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
WORK = HERE / "work"

# Gemma's chat format (the one google/gemma-3-*-it ship), written out because the pre-trained
# checkpoint has the chat tokens but no template. A system message is folded into the first
# user turn, as Gemma's own template does; "assistant" is spelled "model" in the turn header.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set prefix = messages[0]['content'] | trim + '\n\n' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set prefix = '' -%}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\n' }}"
    "{%- if loop.first -%}{{ prefix }}{%- endif -%}"
    "{{ message['content'] | trim }}{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)

END_OF_TURN_ID = 106
"""``<end_of_turn>``: generation must stop here (besides ``<eos>`` = 1), as in the -it models."""


def set_threads(n: int = 1) -> None:
    """One thread by default: the machine has 2 cores shared with another developer."""
    import torch

    os.environ.setdefault("OMP_NUM_THREADS", str(n))
    torch.set_num_threads(n)


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (Linux reports kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Stage:
    """Context manager that logs a stage's wall time and the process's peak RSS to a JSON file.

    Why: the brief asks for wall time and peak memory of every stage, recorded by the code
    that ran it rather than remembered afterwards.
    """

    def __init__(self, stage: str, log: Path, **extra: Any) -> None:
        self.name, self.log, self.extra = stage, log, extra

    def __enter__(self) -> Stage:
        self.t0 = time.time()
        print(f"[{self.name}] start", flush=True)
        return self

    def __exit__(self, *exc: Any) -> None:
        rec = {
            "stage": self.name,
            "wall_s": round(time.time() - self.t0, 1),
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "ok": exc[0] is None,
            "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
            **self.extra,
        }
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        print(f"[{self.name}] {rec}", flush=True)


def save_trained(model: Any, tok: Any, start: Path, out: Path, record: str, meta: dict) -> None:
    """Write a trained model, its tokenizer, the starting model's generation config and the
    run's ``record`` JSON to a folder beside ``out``, then rename it into place.

    Why one writer for every trainer: a run killed while saving must not leave a half-written
    model where the next stage (or the pipeline) would load it, and each stage's output must
    carry the same files (the generation config holds the end-of-turn stop)."""
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    shutil.copy(start / "generation_config.json", tmp / "generation_config.json")
    (tmp / record).write_text(json.dumps(meta, indent=2))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
