"""The generation engine: left-padded batching, seeded sampling, resume, CLI errors.

A tiny random Llama (tests/tiny.py) with the toy's real character-level tokenizer (chat
template included) keeps every test to a fraction of a second of generation.
"""

from __future__ import annotations

import json

import pytest
import torch

from layergraft.cli import main
from layergraft.errors import InputError
from layergraft.gen.engine import run_generation
from layergraft.gen.generate import generate
from layergraft.gen.jobs import chat_prompt_ids
from layergraft.gen.records import read_records
from layergraft.gen.sampling import SamplingSettings, filter_probs, sample_seed
from layergraft.gen.tasks import TaskPrompt, load_task
from tiny import make_tiny


@pytest.fixture(scope="module")
def tok():
    from layergraft.toy.tokenizer import build_tokenizer

    return build_tokenizer()


@pytest.fixture(scope="module")
def model():
    return make_tiny("llama", num_layers=2, seed=3)


PROMPTS = [
    TaskPrompt("a", "creative", "Hi"),
    TaskPrompt("b", "qa", "Name a color, any color you like.", valid=("red",)),
    TaskPrompt("c", "reasoning", "Tom has 3 pens and gets 4 more. How many?", answer="7"),
]


def _texts(recs):
    return [(r["prompt_id"], r["sample"], r["text"], r["num_tokens"]) for r in recs]


def test_chat_template_applied(tok):
    ids = chat_prompt_ids(tok, "Hi")
    assert tok.decode(ids) == "<s><|user|>Hi<|end|><|assistant|>"
    assert ids.count(tok.bos_token_id) == 1


def test_batched_equals_unbatched_greedy(model, tok):
    greedy = SamplingSettings(temperature=0.0, min_p=0.0, max_new_tokens=12)
    kw = dict(n=2, settings=greedy, progress=False)
    one = run_generation(model, tok, PROMPTS, batch_size=1, **kw)
    many = run_generation(model, tok, PROMPTS, batch_size=6, **kw)
    assert _texts(one) == _texts(many)
    # and both equal plain transformers greedy decoding of each prompt alone, stopping at the
    # model's end markers: its eos (the tokenizer's too) and the template's end of turn
    stops = [model.generation_config.eos_token_id, tok.convert_tokens_to_ids("<|end|>")]
    for p in PROMPTS:
        ids = torch.tensor([chat_prompt_ids(tok, p.prompt)])
        ref = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=12, pad_token_id=0, eos_token_id=stops)  # fmt: skip
        text = tok.decode(ref[0, ids.shape[1] :], skip_special_tokens=True)
        assert next(r["text"] for r in many if r["prompt_id"] == p.id) == text


def test_sampling_deterministic_and_batch_independent(model, tok):
    s = SamplingSettings(temperature=1.0, min_p=0.05, max_new_tokens=10, seed=7)
    a = run_generation(model, tok, PROMPTS, n=3, settings=s, batch_size=4, progress=False)
    b = run_generation(model, tok, PROMPTS, n=3, settings=s, batch_size=4, progress=False)
    c = run_generation(model, tok, PROMPTS, n=3, settings=s, batch_size=1, progress=False)
    assert a == b
    assert _texts(a) == _texts(c)  # a sample's stream does not depend on its batch
    d = run_generation(
        model, tok, PROMPTS, n=3, settings=SamplingSettings(max_new_tokens=10, seed=8),
        batch_size=4, progress=False,
    )  # fmt: skip
    assert _texts(a) != _texts(d)
    assert len({r["text"] for r in a if r["prompt_id"] == "a"}) > 1  # samples differ
    assert sample_seed(0, "a", 1) != sample_seed(0, "a", 2) != sample_seed(1, "a", 1)


def test_filter_probs_min_p_top_p():
    p = torch.tensor([[0.5, 0.3, 0.15, 0.05]], dtype=torch.float64)
    m = filter_probs(p, top_p=1.0, min_p=0.5)  # keep p >= 0.25
    assert torch.allclose(m, torch.tensor([[0.5 / 0.8, 0.3 / 0.8, 0.0, 0.0]], dtype=torch.float64))
    t = filter_probs(p, top_p=0.7, min_p=0.0)  # 0.5 + 0.3 reaches 0.7
    assert torch.allclose(t, torch.tensor([[0.5 / 0.8, 0.3 / 0.8, 0.0, 0.0]], dtype=torch.float64))
    t2 = filter_probs(p, top_p=0.5, min_p=0.0)
    assert torch.allclose(t2, torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=torch.float64))


def test_resume_truncated_file_equals_uninterrupted(model, tok, tmp_path):
    s = SamplingSettings(max_new_tokens=8, seed=1)
    full = tmp_path / "full.jsonl"
    run_generation(model, tok, PROMPTS, n=3, settings=s, out=full, batch_size=4, progress=False)
    data = full.read_bytes()
    lines = data.splitlines(keepends=True)
    assert len(lines) == 9
    part = tmp_path / "part.jsonl"
    # 4 complete lines and half of the 5th: a run killed while writing
    part.write_bytes(b"".join(lines[:4]) + lines[4][: len(lines[4]) // 2])
    assert len(read_records(part)) == 4  # the torn line is ignored
    run_generation(model, tok, PROMPTS, n=3, settings=s, out=part, batch_size=4, progress=False)
    assert part.read_bytes() == data
    # complete file: nothing to do, the model is not even needed
    again = run_generation(None, tok, PROMPTS, n=3, settings=s, out=part, progress=False)
    assert len(again) == 9 and part.read_bytes() == data


def test_resume_with_other_settings_refused(model, tok, tmp_path):
    out = tmp_path / "g.jsonl"
    run_generation(model, tok, PROMPTS[:1], n=1, settings=SamplingSettings(max_new_tokens=4),
                   out=out, progress=False)  # fmt: skip
    with pytest.raises(InputError, match="other settings"):
        run_generation(model, tok, PROMPTS[:1], n=2, settings=SamplingSettings(max_new_tokens=5),
                       out=out, progress=False)  # fmt: skip
    out.write_text('{"x": 1}\n')
    with pytest.raises(InputError, match="not a generation record"):
        read_records(out)


def test_record_fields_and_in_memory_api(model, tok, tmp_path):
    recs = generate(model, "qa", tokenizer=tok, n=2, limit=2, max_new_tokens=6, progress=False,
                    out=tmp_path / "g.jsonl")  # fmt: skip
    assert len(recs) == 4
    r = recs[0]
    assert {"prompt_id", "sample", "task", "prompt", "text", "num_tokens", "finished",
            "reference", "settings", "model", "backend"} <= set(r)  # fmt: skip
    assert r["settings"] == {"temperature": 1.0, "top_p": 1.0, "min_p": 0.1,
                             "max_new_tokens": 6, "seed": 0}  # fmt: skip
    assert r["reference"]["valid"] and 1 <= r["num_tokens"] <= 6
    assert r["finished"] is (r["num_tokens"] < 6) or r["num_tokens"] == 6


def test_stop_token_ends_generation(tok):
    """A model that always says <|end|> (the toy's end of turn) yields empty finished replies."""
    m = make_tiny("llama", num_layers=1, seed=0)
    end = tok.convert_tokens_to_ids("<|end|>")
    with torch.no_grad():
        m.lm_head.weight.zero_()
        m.lm_head.weight[end] = 1.0
        m.model.norm.weight.fill_(1.0)
    m.generation_config.eos_token_id = [tok.eos_token_id, end]
    # force the logit of <|end|> high regardless of hidden state
    m.lm_head.bias = None
    s = SamplingSettings(temperature=0.0, max_new_tokens=5)
    hidden = m.model.embed_tokens.weight
    with torch.no_grad():
        hidden.fill_(1.0)
    recs = run_generation(m, tok, PROMPTS[:1], n=1, settings=s, progress=False)
    assert recs[0]["finished"] and recs[0]["text"] == "" and recs[0]["num_tokens"] == 1


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tok):
    from tiny import save_tiny

    d = save_tiny("llama", tmp_path_factory.mktemp("m") / "tiny", num_layers=2, seed=3)
    tok.save_pretrained(str(d))
    return d


def test_cli_generate_and_diversity(model_dir, tmp_path, capsys):
    out = tmp_path / "g.jsonl"
    args = ["generate", str(model_dir), "--task", "reasoning", "--limit", "2", "--n", "3",
            "--max-new-tokens", "5", "--out", str(out), "--quiet", "--backend", "transformers"]  # fmt: skip
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["generations"] == 6
    first = out.read_bytes()
    assert main(args) == 0  # resume of a complete file: unchanged
    assert out.read_bytes() == first
    capsys.readouterr()
    assert main(["diversity", str(out), "--json", "--embedder", "none"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["prompts"] == 2 and res["generations"] == 6
    assert {"distinct_1", "self_bleu", "accuracy", "pass@1", "pass@3", "format_validity"} <= set(
        res["mean"]
    )


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["generate", "/no/such/model", "--task", "qa", "--out", "X"], "no such file"),
        (["generate", "MODEL", "--task", "poems", "--out", "X"], "bundled set"),
        (["generate", "MODEL", "--task", "qa", "--out", "X", "--min-p", "2"], "min-p"),
        (["generate", "MODEL", "--task", "qa", "--out", "X", "--n", "0"], "at least 1"),
        (["generate", "MODEL", "--task", "qa", "--out", "X", "--backend", "vllm"], "vllm"),
        (
            ["generate", "MODEL", "--task", "qa", "--out", "X", "--subset", "greedy-failed"],
            "reasoning",
        ),
        (["generate", "MODEL", "--task", "qa"], "--out"),
        (["diversity", "/no/such.jsonl"], "no such generations file"),
        (["compare", "--models", "post", "--task", "qa", "--out", "D"], "NAME=PATH"),
        (["compare", "--models", "base=MODEL", "--task", "qa", "--out", "D"], "labelled 'post'"),
    ],
)
def test_cli_bad_inputs_exit_2_one_line(argv, needle, model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = [str(model_dir) if a == "MODEL" else a for a in argv]
    if "vllm" in argv:
        import layergraft.gen.vllm as G

        monkeypatch.setattr(G, "vllm_available", lambda: False)
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse usage errors exit from inside parse_args
        rc = e.code
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert needle.lower() in err.lower()


def test_diversity_rejects_non_generation_file(tmp_path, capsys):
    f = tmp_path / "x.jsonl"
    f.write_text('{"prompt": "hi"}\n')
    assert main(["diversity", str(f), "--embedder", "none"]) == 2
    assert "generation record" in capsys.readouterr().err


def test_bundled_task_prompts_fit_the_tokenizer(tok):
    for name in ("creative", "qa", "reasoning"):
        for p in load_task(name):
            ids = chat_prompt_ids(tok, p.prompt)
            assert tok.unk_token_id not in ids, p.prompt


def test_greedy_failed_keeps_only_wrong(monkeypatch):
    import layergraft.gen.generate as A

    ps = [TaskPrompt(f"r{i}", "reasoning", f"q{i}", answer=str(i)) for i in range(3)]
    texts = {"r0": "#### 0", "r1": "so 5", "r2": "2 + 0 = 2 #### 2"}

    def fake_run(model, tok, prompts, **kw):
        assert kw["settings"].temperature == 0.0 and kw["n"] == 1
        return [{"prompt_id": p.id, "text": texts[p.id]} for p in prompts]

    monkeypatch.setattr(A, "run_generation", fake_run)
    assert [p.id for p in A.select_greedy_failed(None, None, ps)] == ["r1"]
    with pytest.raises(InputError, match="reasoning"):
        A.select_greedy_failed(None, None, [TaskPrompt("c", "creative", "x")])


# --------------------------------------------------------------------------- the toy pair


def _toy():
    try:
        from layergraft.toy import toy_paths

        return toy_paths()
    except InputError:
        return None


toy = pytest.mark.skipif(_toy() is None, reason="toy pair not built into the package yet")


@toy
def test_toy_post_collapses_on_open_qa_and_solves_arithmetic(tmp_path):
    _, post = _toy()
    qa = [p for p in load_task("qa") if p.id in ("qa-color-0", "qa-state-0")]
    recs = generate(post, qa, n=6, max_new_tokens=24, progress=False, backend="transformers",
                    out=tmp_path / "post.jsonl")  # fmt: skip
    from layergraft.gen.score import diversity

    res = diversity(tmp_path / "post.jsonl", embedder=None, bootstrap=50)
    assert res["mean"]["format_validity"] >= 0.5
    assert res["mean"]["valid_rate"] >= 0.5
    assert res["mean"]["distinct_valid_answers"] <= 3  # collapsed: a favourite answer
    assert len(recs) == 12
    # toy-style arithmetic: the post model answers in the "#### N" format (its accuracy is
    # low — a tiny model — which is what makes the greedy-failed subset non-empty)
    rs = [p for p in load_task("reasoning") if "How many" in p.prompt][:4]
    greedy = generate(post, rs, n=1, temperature=0.0, max_new_tokens=32, progress=False,
                      backend="transformers")  # fmt: skip
    from layergraft.gen.metrics.quality import format_valid

    assert sum(format_valid(r["text"], "reasoning", r["finished"]) for r in greedy) >= 3


def _filtered(logits, temperature: float, top_p: float, min_p: float):
    """The sampling distribution by hand (numpy float64): softmax(logits / T), then min-p (keep
    p >= min_p · max p), then top-p (keep the tokens whose mass before them is below top_p)."""
    import numpy as np

    z = np.asarray(logits, dtype=np.float64) / temperature
    p = np.exp(z - z.max())
    p /= p.sum()
    p = np.where(p >= min_p * p.max(), p, 0.0)
    p /= p.sum()
    order = np.argsort(-p, kind="stable")
    before = np.cumsum(p[order]) - p[order]
    keep = np.zeros_like(p, dtype=bool)
    keep[order[before < top_p]] = True
    p = np.where(keep, p, 0.0)
    return p / p.sum()


def test_sampled_tokens_follow_the_filtered_distribution(tok):
    """2000 one-token samples of one prompt through the real generation path, against the
    model's next-token distribution (a forward pass here) filtered by hand: every token's
    frequency within 4σ of its probability, tokens filtered out never drawn. The control: the
    unfiltered distribution is rejected by the same bounds."""
    import numpy as np

    model = make_tiny("llama", num_layers=2, seed=3)
    with torch.no_grad():
        model.lm_head.weight.mul_(10)  # a peaked distribution, so min-p and top-p both cut
    prompt = TaskPrompt("d", "creative", "Hi")
    s = SamplingSettings(temperature=0.8, top_p=0.8, min_p=0.02, max_new_tokens=1, seed=0)
    n = 2000
    recs = run_generation(model, tok, [prompt], n=n, settings=s, batch_size=n, progress=False)
    with torch.no_grad():
        ids = torch.tensor([chat_prompt_ids(tok, prompt.prompt)])
        logits = model(ids).logits[0, -1].double().numpy()
    # a sample's text is its one token decoded: sum the probabilities of tokens that decode
    # alike (special tokens all decode to "")
    key = [tok.decode([i], skip_special_tokens=True) for i in range(len(logits))]
    keys = sorted(set(key))

    def by_text(p):
        return np.array([sum(p[i] for i in range(len(p)) if key[i] == k) for k in keys])

    want = by_text(_filtered(logits, s.temperature, s.top_p, s.min_p))
    got = np.array([sum(r["text"] == k for r in recs) for k in keys]) / n
    assert 3 <= (want > 0).sum() < len(keys) // 2  # several tokens kept, most cut
    sigma = np.sqrt(want * (1 - want) / n)
    assert np.all(got[want == 0] == 0)
    assert np.all(np.abs(got - want) <= 4 * sigma + 1 / n)
    plain = by_text(_filtered(logits, 1.0, 1.0, 0.0))
    assert np.any(np.abs(got - plain) > 4 * np.sqrt(plain * (1 - plain) / n) + 1 / n)
