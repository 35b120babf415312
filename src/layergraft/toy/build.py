"""Build the toy base/post pair reproducibly, measure it, and find the shipped copy.

Why the pair is *built* (not hand-made): the toy must behave like a real base/post pair, or
every demo and test built on it proves nothing (DESIGN.md, "The toy pair is an experiment, not
a fixture"). So :func:`build_pair` trains the BASE from scratch on prose + uniform random picks,
fine-tunes it into the POST on narrow chat answers, and *measures* the collapse with the CRC
exact estimator; the numbers go into ``toy_build.json`` beside the models.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from layergraft.checkpoint.outputs import check_output
from layergraft.errors import InputError, OutputError
from layergraft.slr.proxy.crc import crc_exact
from layergraft.slr.proxy.crc_prompts import load_crc_prompts
from layergraft.toy.corpus import pretraining_text
from layergraft.toy.sft_data import sft_examples
from layergraft.toy.tokenizer import CHAT_TEMPLATE, build_tokenizer
from layergraft.toy.train import pretrain, sft, toy_config

MAX_SHARD_SIZE = "2MB"
"""Small enough that each model dir has several shards: the toy exercises the sharded code paths."""


@dataclass(frozen=True)
class BuildSettings:
    """Knobs of one build. The defaults are the shipped pair; tests use a tiny variant."""

    pretrain_chars: int = 3_000_000
    pretrain_steps: int = 900
    pretrain_batch: int = 16
    pretrain_seq_len: int = 256
    pretrain_lr: float = 3e-3
    sft_examples: int = 20_000
    sft_steps: int = 450
    sft_batch: int = 32
    sft_lr: float = 1e-3
    threads: int = 2


def toy_paths() -> tuple[Path, Path]:
    """The shipped (base, post) model dirs inside the installed package."""
    root = Path(str(resources.files("layergraft") / "data" / "toy"))
    base, post = root / "base", root / "post"
    for d in (base, post):
        if not (d / "config.json").is_file():
            raise InputError(
                f"the toy pair is missing from the package ({d} has no config.json); reinstall "
                "layergraft, or rebuild it with: layergraft toy build --out DIR"
            )
    return base, post


def _write_generation_config(model: Any, tokenizer: Any) -> None:
    from transformers import GenerationConfig

    end = tokenizer.convert_tokens_to_ids("<|end|>")
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=[tokenizer.eos_token_id, end],
        pad_token_id=tokenizer.pad_token_id,
    )


def _finalise_tokenizer_files(out: Path) -> None:
    """Put the chat template into ``tokenizer_config.json`` and name the standard fast class.

    Why: transformers 5 writes the template to ``chat_template.jinja``; older loaders (and
    people reading the config) look in ``tokenizer_config.json``. One source of truth: we keep
    the config entry and drop the separate file.
    """
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["chat_template"] = CHAT_TEMPLATE
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg["model_max_length"] = 512
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    jinja = out / "chat_template.jinja"
    if jinja.exists():
        jinja.unlink()


def _save(model: Any, tokenizer: Any, out: Path) -> None:
    _write_generation_config(model, tokenizer)
    model.save_pretrained(str(out), max_shard_size=MAX_SHARD_SIZE, safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    _finalise_tokenizer_files(out)
    for f in out.iterdir():  # shards are written 0600; shipped package data must be world-readable
        f.chmod(0o644)


def _tail_mean(xs: list[float], n: int = 50) -> float:
    tail = xs[-n:]
    return float(sum(tail) / max(len(tail), 1))


def build_pair(
    out_dir: str | Path,
    seed: int = 0,
    progress: bool = True,
    settings: BuildSettings | None = None,
) -> dict[str, Any]:
    """Train the toy BASE from scratch, SFT it into the POST, measure both with CRC, save.

    Writes ``out_dir/base``, ``out_dir/post`` (sharded safetensors, tokenizer with chat
    template, generation config) and ``out_dir/toy_build.json``; everything is built in a temp
    dir beside ``out_dir`` and renamed into place at the end, so an interrupted build leaves
    nothing half-written. Deterministic in ``seed`` on a given machine/torch build
    (``torch.set_num_threads`` fixed, explicit generators). Returns the measurements.
    """
    import torch
    from transformers import LlamaForCausalLM

    s = settings or BuildSettings()
    # the one output rule, before 8 minutes of training: the pair goes into DIR (reused)
    out = check_output(out_dir, kind="dir", flag="--out", reuse=True).resolve()
    for name in ("base", "post", "toy_build.json"):
        if (out / name).exists():
            raise OutputError(f"{out / name} already exists; remove it or choose another --out")
    out.mkdir(exist_ok=True)
    t0 = time.time()
    old_threads = torch.get_num_threads()
    torch.set_num_threads(s.threads)
    tmp = Path(tempfile.mkdtemp(prefix=".toy-build-", dir=out))
    try:
        torch.manual_seed(seed)
        tok = build_tokenizer()
        text = pretraining_text(seed, s.pretrain_chars)
        vocab = tok.get_vocab()
        unk = tok.unk_token_id
        ids = torch.tensor([vocab.get(ch, unk) for ch in text], dtype=torch.long)
        cfg = toy_config(len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
        model = LlamaForCausalLM(cfg)
        base_losses = pretrain(
            model, ids, steps=s.pretrain_steps, batch_size=s.pretrain_batch,
            seq_len=s.pretrain_seq_len, lr=s.pretrain_lr, seed=seed, progress=progress,
        )  # fmt: skip
        _save(model, tok, tmp / "base")
        t_base = time.time() - t0

        convs = sft_examples(seed + 1, s.sft_examples)
        sft_losses = sft(
            model, tok, convs, steps=s.sft_steps, batch_size=s.sft_batch, lr=s.sft_lr,
            seed=seed + 1, progress=progress,
        )  # fmt: skip
        _save(model, tok, tmp / "post")
        t_post = time.time() - t0 - t_base

        prompts = load_crc_prompts("all")
        crc = {}
        for name in ("base", "post"):
            m = LlamaForCausalLM.from_pretrained(str(tmp / name)).eval()
            crc[name] = crc_exact(m, tok, prompts).to_dict()
            crc[name].pop("items")
        result = {
            "seed": seed,
            "settings": asdict(s),
            "base_loss_final": _tail_mean(base_losses),
            "sft_loss_final": _tail_mean(sft_losses),
            "crc": crc,
            "seconds": {
                "base": round(t_base, 1),
                "post": round(t_post, 1),
                "total": round(time.time() - t0, 1),
            },  # fmt: skip
            "versions": {"torch": torch.__version__},
        }
        (tmp / "toy_build.json").write_text(json.dumps(result, indent=2) + "\n")
        for name in ("base", "post", "toy_build.json"):
            os.replace(tmp / name, out / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        torch.set_num_threads(old_threads)
    if progress:
        b, p = crc["base"]["mean"], crc["post"]["mean"]
        print(
            f"toy pair in {out}: base loss {result['base_loss_final']:.3f}, SFT loss "
            f"{result['sft_loss_final']:.3f}; CRC base V={b['V']:.2f} H_norm={b['H_norm']:.2f}, "
            f"post V={p['V']:.2f} H_norm={p['H_norm']:.2f} ({result['seconds']['total']:.0f} s)"
        )
    return result
