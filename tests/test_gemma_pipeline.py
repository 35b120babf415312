"""experiments/gemma3/pipeline.py end to end on a tiny random Gemma-3 pair: the study and the
experiment's own steps run in one process, a second run reuses every step, and the docs
results render through the Gemma page tables of the docs tool (tools/render_results.py today).

No Gemma weights here: base and post are tiny random gemma3_text models (post = base with two
layers perturbed, and an --also model between them) with the toy post's chat tokenizer, run
with the smallest settings.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import torch

from tiny import save_tiny, torch_threads

ROOT = Path(__file__).resolve().parents[1]
#: the Gemma pages' tables and the side-by-side pairs table
TABLES = ("table_crc", "table_sweep", "table_caveats", "table_picks", "table_validation",
          "table_parts", "table_candidates", "table_verdicts", "table_compare", "table_prune",
          "table_prune_summary", "table_steps", "table_timing")  # fmt: skip


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def _docs_tool():
    """The module that renders the Gemma pages (wherever it lives: found by its table_picks)."""
    hits = [p for p in sorted((ROOT / "tools").rglob("*.py")) if "def table_picks" in p.read_text()]
    assert hits, "no tool under tools/ defines table_picks"
    return _load(hits[0], "_docs_tool")


def _models(tmp: Path) -> tuple[Path, Path, Path]:
    """Base, post (layers 2 and 3 moved) and an SFT-like stage between them (layer 2 moved
    less), each with the toy post's chat tokenizer (the base's too: pruning reads its text)."""
    from safetensors.torch import load_file, save_file

    from layergraft.toy import toy_paths

    toy_post = toy_paths()[1]
    vocab = json.loads((toy_post / "config.json").read_text())["vocab_size"]
    dirs = tmp / "base", tmp / "post", tmp / "sft"
    for d, scale, layers in zip(dirs, (0.0, 0.5, 0.2), ((), (2, 3), (2,)), strict=True):
        save_tiny("gemma3_text", d, num_layers=6, seed=0, vocab_size=vocab,
                  max_position_embeddings=1024)  # fmt: skip
        for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
            shutil.copy(toy_post / name, d / name)
        if layers:
            sd = load_file(d / "model.safetensors")
            g = torch.Generator().manual_seed(1)
            for k in sd:
                if any(f".layers.{i}." in k for i in layers):
                    sd[k] = sd[k] + scale * torch.randn(sd[k].shape, generator=g)
            save_file(sd, d / "model.safetensors", metadata={"format": "pt"})
    return dirs


def test_the_pipeline_runs_the_study_reuses_it_and_renders_the_gemma_tables(tmp_path, capsys):
    pipeline = _load(ROOT / "experiments" / "gemma3" / "pipeline.py", "_gemma_pipeline")
    base, post, sft = _models(tmp_path)
    work, docs = tmp_path / "job", tmp_path / "docs"
    argv = ["--name", "tiny", "--base", str(base), "--post", str(post), "--work", str(work),
            "--docs", str(docs), "--also", f"sft={sft}", "--n", "1", "--limit", "1", "--max-new-tokens", "16", "--parts", "all", "--alphas", "1",
            "--validate", "1", "--validate-samples", "1", "--crc-prompts", "4",
            "--ppl-tokens", "512", "--ppl-seqlen", "128", "--quiet"]  # fmt: skip
    with torch_threads(1):
        pipeline.main(argv)
        first = json.loads((docs / "results.json").read_text())
        log = json.loads((work / "job.log.json").read_text())
        assert {v["status"] for v in log.values()} == {"ran"}
        pipeline.main(argv)
    log = json.loads((work / "job.log.json").read_text())
    assert {v["status"] for v in log.values()} == {"reused"}, log
    res = json.loads((docs / "results.json").read_text())

    # every step of the study and of the experiment, timed from the job's log
    names = set(res["steps"])
    assert {"check", "crc", "sweep", "hybrids", "compare/creative", "compare/qa",
            "compare/reasoning", "crc-closers/base", "crc-closers/post", "crc-closers/sft",
            "prune/angular-2",
            "prune/angular-4", "prune/bi-2", "prune/bi-4"} <= names  # fmt: skip
    assert set(res["timing_s"]) == names
    for k, v in res["steps"].items():
        assert v["status"] == "reused" and v["peak_rss_mib"] > 0
        assert v == {**first["steps"][k], "status": "reused"}  # recorded when it ran
    assert "peak so far" in res["steps_note"]

    # the picks under the docs keys, their runs compared under the same names
    picks = res["picks"]
    assert set(picks) <= {"slr_paper", "paper_best", "format_best", "validated", "soup"}
    assert {"slr_paper", "paper_best", "soup"} <= set(picks)
    for key, p in picks.items():
        assert "same_as" not in p or p["same_as"] in picks
        for task, cr in res["compare"].items():
            assert p.get("same_as", key) in cr["runs"], (task, key)
    for cr in res["compare"].values():
        assert {"post", "base", "sft", "post@T1.5", "post@no-min-p"} <= set(cr["runs"])
        assert not {"hybrid", "paper_pick", "format_pick"} & set(cr["runs"])
        assert all("per_prompt" not in r for r in cr["runs"].values())
    assert set(res["verdicts"]["per_pick"]) == {k for k, p in picks.items() if "same_as" not in p}
    assert res["crc"]["post"]["closers"]["n"] == 4 and res["crc"]["base"]["by_category"]
    assert set(res["pruning"]) == {"angular_remove_2", "angular_remove_4", "bi_remove_2",
                                   "bi_remove_4"}  # fmt: skip
    assert list(res["crc"]) == ["base", "post", "sft"] and res["pair"]["also"] == ["sft"]
    assert res["selection"]["picks"]["paper"]
    assert (docs / "qa_metrics_bars.png").is_file() and (docs / "heatmaps.png").is_file()

    # the docs tool renders every Gemma table from it, and the pairs table beside it
    tool = _docs_tool()
    for name in TABLES:
        assert getattr(tool, name)(res).strip(), name
    assert "| tiny | post model |" in tool.table_pairs({"tiny": res})
    if (
        hasattr(tool, "table_headline")
        and "validated" in picks
        and "same_as" not in picks["slr_paper"]
    ):
        # the summary row of the planted pair reads the picks and the 4-layer pruning
        src = {
            k: json.loads((ROOT / "docs" / d / "results.json").read_text())
            for k, d in (("demo", "demo"), ("natural", "gemma3-natural"), ("prune", "prune"))
        }
        assert "`" + picks["validated"]["label"] + "`" in tool.table_headline(
            {**src, "planted": res}, lambda page: page
        )

    # --no-pruning keeps the previous docs results' pruning section and its steps
    capsys.readouterr()
    with torch_threads(1):
        pipeline.main([*argv, "--no-pruning"])
    kept = json.loads((docs / "results.json").read_text())
    assert kept["pruning"] == res["pruning"]
    assert kept["steps"]["prune/bi-4"]["status"].startswith("from the previous run")
