"""Property tests (hypothesis) over random tiny configs and random layer ranges.

What holds for *every* config and range list, not just the hand-picked ones of the other
tests:

- restore on disk copies tensors bit for bit: layers in the ranges from the base, everything
  else from the post model, embeddings / head (with the final norm) from whichever model the
  options name; a tied model refuses differing options and writes nothing;
- the in-memory swap shows the base's layers inside the block and is its own inverse on exit,
  normal or by exception (every parameter and buffer of both models bit-identical, same
  storage);
- a CRC sweep (and the sampled CRC estimator under a seed) gives identical results twice, even
  with the global RNG disturbed in between;
- a pruned model (mostly ghosted; also the folded recoveries) saved and reloaded gives exactly
  the in-memory pruned model's logits, and its KV cache agrees with the full forward pass.

Building models is the expensive part, so the default example counts are small; ``--slow``
runs many more. Hypothesis's example database is off (nothing is written into the repo); a
failure prints the falsifying example and a ``@reproduce_failure`` blob instead.
"""

from __future__ import annotations

import json
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tiny import make_tiny, write_few_crc_prompts

# every tiny family whose decoder layers are named model.layers.N (the tensor-name check of
# the restore property is written independently of the adapters)
FAMILIES = ["llama", "qwen2", "gemma2", "mistral", "qwen3", "gemma", "gemma3_text", "phi3", "olmo2"]
_EXPLICIT_HEAD_DIM = {"qwen3", "gemma", "gemma2", "gemma3_text"}


@pytest.fixture(autouse=True, scope="module")
def _hypothesis_home(tmp_path_factory):
    """Hypothesis caches things (source constants) under ``./.hypothesis`` even without an
    example database: point it at a temp dir so nothing is left in the working tree."""
    from hypothesis.configuration import set_hypothesis_home_dir

    set_hypothesis_home_dir(tmp_path_factory.mktemp("hypothesis"))
    yield
    set_hypothesis_home_dir(None)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Models this small gain nothing from intra-op threads, and on a 2-core machine busy
    with other processes the threads' barriers made each forward pass 20-100x slower
    (measured: a CRC sweep of a 4-layer tiny pair took 3.6 s with 2 threads, 0.16 s with 1).
    Restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _settings(request: pytest.FixtureRequest, default: int, slow: int) -> settings:
    """``default`` examples, or ``slow`` with ``--slow``; no deadline (model building is slow
    and uneven), no example database (would leave ``.hypothesis/`` in the working dir)."""
    n = slow if request.config.getoption("--slow") else default
    return settings(
        max_examples=n,
        deadline=None,
        database=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# ---- strategies ------------------------------------------------------------------------------
@st.composite
def tiny_configs(draw: Any, min_layers: int = 2, max_layers: int = 6) -> dict[str, Any]:
    """A family, a layer count and config overrides with hidden sizes compatible with the
    heads (hidden = heads * head_dim; key/value heads divide the heads)."""
    fam = draw(st.sampled_from(FAMILIES))
    heads = draw(st.sampled_from([1, 2, 4]))
    kv = draw(st.sampled_from([k for k in (1, 2, 4) if heads % k == 0]))
    head_dim = draw(st.sampled_from([4, 8, 16]))  # even: rotary halves it
    kw: dict[str, Any] = dict(
        hidden_size=heads * head_dim,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        intermediate_size=draw(st.integers(1, 12)) * 8,
        tie_word_embeddings=draw(st.booleans()),
    )
    if fam in _EXPLICIT_HEAD_DIM:
        kw["head_dim"] = head_dim
    if fam in ("gemma2", "gemma3_text"):
        kw["query_pre_attn_scalar"] = head_dim
    return {
        "family": fam,
        "num_layers": draw(st.integers(min_layers, max_layers)),
        "overrides": kw,
    }


@st.composite
def disjoint_ranges(draw: Any, n: int, max_covered: int | None = None) -> list[tuple[int, int]]:
    """Non-overlapping, non-empty ``(start, end)`` ranges inside ``[0, n)`` (adjacent ones
    allowed), in a random order."""
    cuts = sorted(draw(st.sets(st.integers(0, n), min_size=2, max_size=n + 1)))
    segments = list(zip(cuts, cuts[1:], strict=False))
    chosen = [s for s in segments if draw(st.booleans())] or [draw(st.sampled_from(segments))]
    if max_covered is not None:  # e.g. pruning must keep a layer: drop ranges until it does
        while len(chosen) > 1 and sum(e - s for s, e in chosen) > max_covered:
            chosen.pop(draw(st.integers(0, len(chosen) - 1)))
        s, e = chosen[0]
        if sum(e - s for s, e in chosen) > max_covered:
            chosen = [(s, s + max_covered)]
    return draw(st.permutations(chosen))


def range_spec(draw: Any, ranges: list[tuple[int, int]]) -> Any:
    """The same ranges in one of the forms the API accepts: ``"0:2,5:7"`` (spaces allowed),
    a list of ``"s:e"`` strings, or a list of ``[s, e]`` pairs."""
    form = draw(st.sampled_from(["text", "texts", "pairs", "tuples"]))
    if form == "text":
        sep = draw(st.sampled_from([",", ", "]))
        return sep.join(f"{s}:{e}" if draw(st.booleans()) else f"{s} : {e}" for s, e in ranges)
    if form == "texts":
        return [f"{s}:{e}" for s, e in ranges]
    if form == "pairs":
        return [[s, e] for s, e in ranges]
    return [(s, e) for s, e in ranges]


# ---- helpers ---------------------------------------------------------------------------------
def _save(cfg: dict[str, Any], path: Path, seed: int, dtype: Any, shard: str | None) -> Path:
    """A tiny model of ``cfg`` with weights from ``seed``, stored in ``dtype``."""
    from transformers.utils import logging as hf_logging

    model = make_tiny(cfg["family"], cfg["num_layers"], seed, **cfg["overrides"]).to(dtype)
    kwargs: dict[str, Any] = {"max_shard_size": shard} if shard else {}
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(path, **kwargs)
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
    return path


def _read_tensors(d: Path) -> dict[str, torch.Tensor]:
    """Every tensor of every ``*.safetensors`` file in ``d`` (read without layergraft)."""
    from safetensors.torch import load_file

    out: dict[str, torch.Tensor] = {}
    for f in sorted(d.glob("*.safetensors")):
        part = load_file(str(f))
        assert not part.keys() & out.keys(), f"{f.name} repeats tensors"
        out.update(part)
    return out


def _bits(t: torch.Tensor) -> bytes:
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and _bits(a) == _bits(b)


_LAYER = re.compile(r"^model\.layers\.(\d+)\.")


# ---- (a) restore on disk -------------------------------------------------------------------
def test_restore_copies_exactly_the_named_tensors(request, tmp_path):
    from layergraft.api import restore
    from layergraft.errors import InputError

    @_settings(request, default=10, slow=100)
    @given(cfg=tiny_configs(), data=st.data())
    def prop(cfg: dict[str, Any], data: Any) -> None:
        n = cfg["num_layers"]
        ranges = data.draw(disjoint_ranges(n), label="ranges")
        spec = range_spec(data.draw, ranges)
        embed = data.draw(st.sampled_from(["post", "base"]), label="embed_from")
        head = data.draw(st.sampled_from(["post", "base"]), label="head_from")
        dtype = data.draw(st.sampled_from([torch.float32, torch.bfloat16]), label="dtype")
        shard_b, shard_p = (
            data.draw(st.sampled_from([None, "20KB"]), label=f"{who} shards")
            for who in ("base", "post")
        )
        with tempfile.TemporaryDirectory(dir=tmp_path) as td:
            root = Path(td)
            base = _save(cfg, root / "base", 1, dtype, shard_b)
            post = _save(cfg, root / "post", 2, dtype, shard_p)
            out = root / "out"
            tied = cfg["overrides"]["tie_word_embeddings"]
            if tied and embed != head:  # one tensor cannot come from two models
                with pytest.raises(InputError, match="ties"):
                    restore(base, post, spec, out, embed_from=embed, head_from=head, progress=False)
                assert sorted(p.name for p in root.iterdir()) == ["base", "post"]
                return
            replace = data.draw(st.booleans(), label="replace an existing output")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if replace:  # an older output with other layers: --force must leave no trace
                    other = [(0, n)] if ranges != [(0, n)] else [(0, 1)]
                    restore(post, base, other, out, progress=False)
                    (out / "stray.txt").write_text("from the old output")
                restore(
                    base, post, spec, out, embed_from=embed, head_from=head, force=replace,
                    progress=False,
                )  # fmt: skip
            assert not (out / "stray.txt").exists()
            for f in ("config.json", "generation_config.json"):  # sidecars from the post model
                assert (out / f).read_bytes() == (post / f).read_bytes()
            tb, tp, th = _read_tensors(base), _read_tensors(post), _read_tensors(out)
            assert th.keys() == tp.keys()
            chosen = {i for s, e in ranges for i in range(s, e)}
            for name, t in th.items():
                m = _LAYER.match(name)
                if m:
                    src = tb if int(m.group(1)) in chosen else tp
                elif name.startswith("model.embed_tokens."):
                    src = tb if embed == "base" else tp
                else:  # final norm and lm_head
                    src = tb if head == "base" else tp
                assert _same_bits(t, src[name]), name
            meta = json.loads((out / "layergraft.json").read_text())
            assert meta["details"]["layers_from_base"] == sorted(chosen)
            assert [p.name for p in root.iterdir() if p.name.startswith(".")] == []

    prop()


# ---- (b) in-memory swap --------------------------------------------------------------------
def _snapshot(model: Any) -> dict[str, tuple[torch.Tensor, bytes, int]]:
    """name -> (the tensor object, its bytes, its storage pointer), params and buffers."""
    items = [("p:" + k, v) for k, v in model.named_parameters(remove_duplicate=False)]
    items += [("b:" + k, v) for k, v in model.named_buffers(remove_duplicate=False)]
    return {k: (v, _bits(v), v.data_ptr()) for k, v in items}


def _unchanged(model: Any, snap: dict[str, tuple[torch.Tensor, bytes, int]]) -> None:
    now = _snapshot(model)
    assert now.keys() == snap.keys()
    for k, (v, bits, ptr) in snap.items():
        assert now[k][0] is v, f"{k}: a different tensor object after the swap"
        assert now[k][2] == ptr, f"{k}: different storage after the swap"
        assert now[k][1] == bits, f"{k}: values changed"


class _Boom(Exception):
    pass


def test_swap_is_its_own_inverse(request):
    from layergraft.arch import adapter_for_model
    from layergraft.slr.hybrid.swap import swapped_layers

    @_settings(request, default=20, slow=300)
    @given(cfg=tiny_configs(), data=st.data())
    def prop(cfg: dict[str, Any], data: Any) -> None:
        fam, n, kw = cfg["family"], cfg["num_layers"], cfg["overrides"]
        ranges = data.draw(disjoint_ranges(n), label="ranges")
        spec = [tuple(r) for r in ranges]
        raise_inside = data.draw(st.booleans(), label="raise inside")
        base_dtype = data.draw(st.sampled_from([torch.float32, torch.bfloat16]), label="base dtype")
        post = make_tiny(fam, n, seed=2, **kw)
        base = make_tiny(fam, n, seed=1, **kw).to(base_dtype)  # a cast copy inside the block
        snap_p, snap_b = _snapshot(post), _snapshot(base)
        ad = adapter_for_model(post)
        chosen = {i for s, e in ranges for i in range(s, e)}
        ids = torch.randint(3, 128, (1, 7), generator=torch.Generator().manual_seed(n))
        layer_bits = [
            {k: _bits(v) for k, v in layer.named_parameters()} for layer in ad.layers(post)
        ]
        try:
            with swapped_layers(post, base, spec):
                pl, bl = ad.layers(post), ad.layers(base)
                for i in range(n):
                    ref = dict(bl[i].named_parameters())
                    for name, p in pl[i].named_parameters():
                        if i in chosen:
                            want = ref[name].to(p.dtype)
                            assert _same_bits(p, want), f"layer {i} {name}: not the base's"
                        else:
                            assert _bits(p) == layer_bits[i][name], f"layer {i} {name} changed"
                with torch.no_grad():
                    post(ids)  # the hybrid runs
                if raise_inside:
                    raise _Boom
        except _Boom:
            assert raise_inside
        _unchanged(post, snap_p)
        _unchanged(base, snap_b)

    prop()


# ---- (c) sweep determinism -----------------------------------------------------------------
@pytest.fixture(scope="module")
def few_prompts(tmp_path_factory):
    """Four prompts of each CRC category (like tests/test_sweep.py)."""
    return write_few_crc_prompts(tmp_path_factory.mktemp("crc") / "few.jsonl")


def _without_timing(res: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in res.items() if k != "timing"}


def test_sweep_is_deterministic(request, tmp_path, few_prompts):
    from layergraft.slr.proxy.crc import crc
    from layergraft.slr.sweep.run import sweep
    from layergraft.toy.tokenizer import save_tokenizer

    @_settings(request, default=8, slow=80)
    @given(cfg=tiny_configs(max_layers=4), data=st.data())
    def prop(cfg: dict[str, Any], data: Any) -> None:
        method = data.draw(st.sampled_from(["slr", "both"]), label="method")
        prefix_reuse = data.draw(st.booleans(), label="prefix_reuse")
        seed = data.draw(st.integers(0, 2**31 - 1), label="seed")
        n = cfg["num_layers"]
        min_len = data.draw(st.integers(1, n), label="min_len")
        max_len = data.draw(st.integers(min_len, n), label="max_len")
        with tempfile.TemporaryDirectory(dir=tmp_path) as td:
            root = Path(td)
            base = _save(cfg, root / "base", 1, torch.float32, None)
            post = _save(cfg, root / "post", 2, torch.float32, None)
            save_tokenizer(post)
            runs, sampled = [], []
            for disturb in (None, seed ^ 0x5A5A):
                if disturb is not None:  # the global RNG must not matter
                    torch.manual_seed(disturb)
                    torch.rand(17)
                runs.append(
                    sweep(
                        base,
                        post,
                        prompts=few_prompts,
                        method=method,
                        prefix_reuse=prefix_reuse,
                        min_len=min_len,
                        max_len=max_len,
                        device="cpu",
                        progress=False,
                    )
                )
                sampled.append(
                    crc(
                        post,
                        prompts=few_prompts,
                        estimator="sample",
                        samples=4,
                        seed=seed,
                        device="cpu",
                    )
                )
            assert _without_timing(runs[0]) == _without_timing(runs[1])
            assert sampled[0] == sampled[1]
            every = {
                f"{s}:{e}" for s in range(n) for e in range(s + min_len, min(s + max_len, n) + 1)
            }
            assert {r["interval"] for r in runs[0]["intervals"]} == every

    prop()


# ---- (d) pruned (ghosted or folded): saved == in memory ------------------------------------
@pytest.fixture(scope="module")
def calib_file(tmp_path_factory):
    from layergraft.text import DEFAULT_CALIB

    p = tmp_path_factory.mktemp("calib") / "calib.txt"
    p.write_text(DEFAULT_CALIB.read_text()[:3000])
    return p


# families whose MLP output is normalised before the residual add: ReplaceMe cannot fold there
_POST_NORM_MLP = {"gemma2", "gemma3_text", "olmo2"}


def test_saved_pruned_model_reloads_with_identical_logits(request, tmp_path, calib_file):
    from transformers import AutoModelForCausalLM

    from layergraft.arch import adapter_for_model
    from layergraft.errors import ArchitectureError, RangeError
    from layergraft.models.load import load_model, load_tokenizer
    from layergraft.prune import recover as R
    from layergraft.prune.cut import parse_removal
    from layergraft.prune.job import calibration_batches
    from layergraft.prune.model import prune_model
    from layergraft.prune.pipeline import prune
    from layergraft.toy.tokenizer import save_tokenizer

    calib_tokens, seqlen, batch_size = 512, 64, 4

    @_settings(request, default=8, slow=80)
    @given(cfg=tiny_configs(), data=st.data())
    def prop(cfg: dict[str, Any], data: Any) -> None:
        n = cfg["num_layers"]
        ranges = data.draw(disjoint_ranges(n, max_covered=n - 1), label="remove")
        # single layers may also be written bare ("3" = "3:4")
        items = [
            str(s) if e == s + 1 and data.draw(st.booleans()) else f"{s}:{e}" for s, e in ranges
        ]
        remove = ",".join(items)
        gaps = parse_removal(remove, n)
        assert gaps == _merged(ranges)
        # mostly the ghosted operators (their own module on load), sometimes the folded ones
        recover = data.draw(
            st.sampled_from(["ghost", "ghost", "diag", "scale", "replaceme", "none"]),
            label="recover",
        )
        bias = recover == "ghost" and data.draw(st.booleans(), label="bias")
        sequential = data.draw(st.booleans(), label="sequential")
        with tempfile.TemporaryDirectory(dir=tmp_path) as td:
            root = Path(td)
            src = _save(cfg, root / "m", 3, torch.float32, None)
            save_tokenizer(src)
            out = root / "pruned"
            kw = dict(damp=R.DEFAULT_DAMP, bias=bias, sequential=sequential)
            args = dict(calib=calib_file, calib_tokens=calib_tokens, seqlen=seqlen)
            refusal = None
            if recover == "replaceme" and gaps[0][0] == 0:
                refusal = RangeError
            elif recover == "replaceme" and cfg["family"] in _POST_NORM_MLP:
                refusal = ArchitectureError
            if refusal is not None:  # refused before writing anything
                with pytest.raises(refusal):
                    prune(src, out, remove=remove, recover=recover, **args, **kw)
                assert sorted(p.name for p in root.iterdir()) == ["m"]
                return
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                prune(src, out, remove=remove, recover=recover, batch_size=batch_size, **args, **kw)
                ref = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
                batches = calibration_batches(
                    load_tokenizer(src),
                    calib_file,
                    n_tokens=calib_tokens,
                    seqlen=seqlen,
                    batch_size=batch_size,
                )
                ref = prune_model(ref, adapter_for_model(ref), gaps, recover, batches, **kw).model
            ghosted = "layergraft_ghost" in json.loads((out / "config.json").read_text())
            assert ghosted == (recover in ("ghost", "diag"))
            loaded = load_model(out).eval()
            layers = adapter_for_model(loaded).layers(loaded)
            assert len(layers) == n - sum(e - s for s, e in gaps)
            x = torch.randint(3, 104, (2, 11), generator=torch.Generator().manual_seed(n))
            with torch.no_grad():
                full = loaded(x).logits
                torch.testing.assert_close(full, ref(x).logits, rtol=0, atol=0)
                # the KV cache agrees with the full forward after renumbering: prefix, then
                # one token at a time
                k = data.draw(st.integers(1, x.shape[1] - 1), label="prefix")
                cached = _incremental_logits(loaded, x, k)
                torch.testing.assert_close(cached, full, rtol=1e-4, atol=1e-4)

    prop()


def _incremental_logits(model: Any, x: torch.Tensor, k: int) -> torch.Tensor:
    """Logits of ``x`` computed as a ``k``-token prefix, then one token at a time through one
    KV cache (the cache argument is ``cache`` in transformers 5, ``past_key_values`` before)."""
    import inspect

    from transformers import DynamicCache

    params = inspect.signature(model.forward).parameters
    name = "cache" if "cache" in params else "past_key_values"
    cache = DynamicCache(config=model.config)
    steps = [model(x[:, :k], use_cache=True, **{name: cache}).logits]
    for t in range(k, x.shape[1]):
        steps.append(model(x[:, t : t + 1], use_cache=True, **{name: cache}).logits)
    return torch.cat(steps, 1)


def _merged(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, with adjacent ranges joined (an independent merge_adjacent)."""
    out: list[tuple[int, int]] = []
    for s, e in sorted(ranges):
        if out and s == out[-1][1]:
            out[-1] = (out[-1][0], e)
        else:
            out.append((s, e))
    return out
