"""Every kind of hybrid written to disk is the hybrid the sweep scored: whole intervals, interval
soups (alpha < 1), one part, and a part blended, written by `restore` / `soup --layers` and by
`sweep --restore-best`, compared by logits with a hybrid built by hand from the two
checkpoints' parameters (tiny.hand_built_hybrid). An off-by-one in the written layers
([s, e] for [s, e)) changes layer e and fails here."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from layergraft.cli import main
from layergraft.toy import toy_paths
from tiny import hand_built_hybrid, write_few_crc_prompts

BASE, POST = (str(p) for p in toy_paths())
IDS = torch.tensor([[1, 5, 9, 14, 22, 30, 41, 7, 3, 60, 11, 2]])


def _logits(path) -> torch.Tensor:
    m = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        return m(IDS).logits


def _ref(row) -> torch.Tensor:
    with torch.no_grad():
        return hand_built_hybrid(row, BASE, POST)(IDS).logits


@pytest.mark.parametrize(
    "row, argv",
    [
        ({"start": 2, "end": 5}, ["restore", "--layers", "2:5"]),
        ({"start": 2, "end": 5, "parts": "mlp"}, ["restore", "--layers", "2:5", "--parts", "mlp"]),
        ({"start": 3, "end": 6, "alpha": 0.5}, ["soup", "--alpha", "0.5", "--layers", "3:6"]),
        (
            {"start": 1, "end": 4, "alpha": 0.25, "parts": "attn"},
            ["soup", "--alpha", "0.25", "--layers", "1:4", "--parts", "attn"],
        ),
    ],
)
def test_restore_and_soup_write_the_hybrid_they_name(tmp_path, row, argv):
    out = tmp_path / "h"
    assert main([*argv, "--base", BASE, "--post", POST, "--out", str(out), "--quiet"]) == 0
    got = _logits(out)
    assert torch.allclose(got, _ref(row), atol=1e-5)
    # one layer more (the closed range [s, e]) is another model: the comparison can tell
    wider = {**row, "end": row["end"] + 1}
    assert not torch.allclose(got, _ref(wider), atol=1e-5)


def test_restore_best_writes_the_interval_soup_the_sweep_chose(tmp_path):
    prompts = write_few_crc_prompts(tmp_path / "p.jsonl", per_category=2)
    out, hybrid = tmp_path / "sw", tmp_path / "best"
    rc = main(["sweep", "--base", BASE, "--post", POST, "--out", str(out), "--prompts",
               str(prompts), "--starts", "2,3", "--alphas", "0.5", "--parts", "mlp",
               "--rule", "paper", "--restore-best", str(hybrid), "--quiet", "--threads", "1"])  # fmt: skip
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    best = res["best"]["paper"]
    assert best.get("alpha") == 0.5 and best.get("parts") == "mlp" and "start" in best
    assert torch.allclose(_logits(hybrid), _ref(best), atol=1e-5)
