"""Restore wall time vs ``cp -r`` (and vs mergekit's passthrough), side by side, warm cache.

What: for each pair size (default 0.4 and 1.0 GB per model) and each layout (one
``model.safetensors``, and the same weights in 5 shards; greedy packing may make it 6), a
random-weight bf16 Llama base/post pair is built once (numpy random bits through
layergraft's own streaming writer, in a child process so the measuring parent stays small),
then timed:

* ``cp -r POST OUT``                           the floor: copying the post model as is
* ``layergraft restore --layers R``            SLR on disk, sha256 of the output + NaN/Inf scan
* ``layergraft restore --layers R --no-hash``  the same without output hashing (scan still on)
* ``mergekit-yaml passthrough.yaml OUT``       the same hybrid with mergekit, if installed

How: the inputs are read once before timing (warm page cache), one untimed run of each tool
warms the output side and Python's bytecode cache, then ``--repeat`` rounds run every tool
once, alternating so that drift hits all of them alike; each run is a fresh process, after
``rm -r OUT`` and ``sync``. Printed per configuration: median, min and max wall seconds, the
median CPU seconds (user + system: robust when other jobs share the cores) and peak RSS, and
the ratios of the medians (and of the minima) against the goals: ``--no-hash`` <= 1.2x
``cp -r``, with hashing <= 2x ``cp -r``; vs mergekit: <= 0.5x time, <= 0.25x peak RSS.
mergekit is looked up as ``mergekit-yaml`` on PATH or in ``--mergekit-venv`` (``make bench``
creates one).

Bytecode: an installed package has compiled ``.pyc`` files, so the tools run with a bytecode
cache (``PYTHONPYCACHEPREFIX`` in the work dir, filled by the warm-up round) even where
``PYTHONDONTWRITEBYTECODE`` is set, as on this project's machines; ``--no-bytecode-cache``
measures without one (every run then compiles layergraft's modules: ~0.1 s more).

A 0.4 MB pair (size 0) is timed first: its restore time is the fixed cost of one run
(interpreter start-up, imports, planning, sidecars, provenance, exit), which ``cp`` hardly
has; it explains most of the ratio on small models.

    python benchmarks/bench_restore.py [--sizes 0,0.4,1.0] [--shards 1,5] [--repeat 5] [--workdir DIR]

Check the machine is quiet first (``cat /proc/loadavg``): on a 2-core machine one busy core
changes every number, and the ratios most of all.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOALS = {"restore --no-hash": 1.2, "layergraft restore": 2.0}  # x cp -r, median


def build_pair(root: Path, size_gb: float, shards: int) -> int:
    """A Llama-shaped pair of random finite bf16 weights of about ``size_gb`` each, in
    ``shards`` files; returns the number of layers. Size 0: a 4-layer model of ~0.4 MB,
    whose restore time is the fixed cost of a run (start-up, imports, sidecars, exit)."""
    import numpy as np

    from layergraft.checkpoint.writer import OutTensor, write_checkpoint

    hidden, inter, vocab, heads = (64, 128, 256, 4) if size_gb == 0 else (2048, 5632, 32000, 16)
    per_layer = 4 * hidden * hidden + 3 * hidden * inter + 2 * hidden
    layers = max(2, round((size_gb * 1e9 / 2 - 2 * vocab * hidden) / per_layer))
    layers = 4 if size_gb == 0 else layers
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": heads,
        "vocab_size": vocab,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False,
        "dtype": "bfloat16",
    }
    shapes = {"model.embed_tokens.weight": (vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
            shapes[p + f"self_attn.{n}.weight"] = (hidden, hidden)
        shapes[p + "mlp.gate_proj.weight"] = (inter, hidden)
        shapes[p + "mlp.up_proj.weight"] = (inter, hidden)
        shapes[p + "mlp.down_proj.weight"] = (hidden, inter)
        shapes[p + "input_layernorm.weight"] = (hidden,)
        shapes[p + "post_attention_layernorm.weight"] = (hidden,)
    shapes["model.norm.weight"] = (hidden,)
    shapes["lm_head.weight"] = (vocab, hidden)
    total = sum(2 * int(np.prod(s)) for s in shapes.values())
    shard_bytes = total if shards <= 1 else -(-total // shards)
    for role, seed in (("base", 1), ("post", 2)):
        d = root / role
        if (d / "config.json").exists():
            continue
        d.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(seed)

        def bf16(shape, rng=rng):  # float32 normals, top 16 bits: finite bf16
            n = int(np.prod(shape))
            return lambda: (rng.standard_normal(n, dtype=np.float32).view(np.uint32) >> 16).astype(
                np.uint16
            )

        tensors = [
            OutTensor(n, "BF16", s, 2 * int(np.prod(s)), load=bf16(s)) for n, s in shapes.items()
        ]
        write_checkpoint(d, tensors, max_shard_bytes=shard_bytes, hash_outputs=False)
        (d / "config.json").write_text(json.dumps(cfg, indent=2))
    return layers


Run = tuple[float, float, float]  # wall s, CPU s, peak RSS MiB


def timed(cmd: list[str], env: dict[str, str]) -> Run:
    """(wall seconds, CPU seconds, peak RSS MiB) of ``cmd`` run in a fresh process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"command failed: {' '.join(cmd)}\n{err[-2000:]}")
    return wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss / 1024


def bench_one(
    work: Path, size_gb: float, shards: int, repeat: int, mk_bin: str | None, env: dict[str, str]
) -> dict[str, list[Run]]:
    """Build (or reuse) one pair under ``work`` and time every tool on it."""
    pair = work / f"pair-{size_gb:g}gb-{shards}shard"
    built = subprocess.run(
        [sys.executable, __file__, "--build-only", str(pair), "--sizes", str(size_gb)]
        + ["--shards", str(shards)],
        check=True,
        capture_output=True,
        text=True,
    )
    layers = int(built.stdout.strip().splitlines()[-1])
    base, post = pair / "base", pair / "post"
    lo, hi = layers // 4, layers // 4 + max(1, layers // 4)
    lg = [sys.executable, "-m", "layergraft", "restore", "--base", str(base), "--post", str(post)]
    lg += ["--layers", f"{lo}:{hi}", "--quiet"]
    out = work / "out"
    tools: dict[str, list[str]] = {
        "cp -r": ["cp", "-r", str(post), str(out)],
        "layergraft restore": [*lg, "--out", str(out)],
        "restore --no-hash": [*lg, "--no-hash", "--out", str(out)],
    }
    if mk_bin:
        from layergraft.slr.hybrid.restore import mergekit_yaml

        mk_yaml = pair / "passthrough.yaml"
        mk_yaml.write_text(mergekit_yaml(str(base), str(post), [(lo, hi)], layers, "bfloat16"))
        tools["mergekit passthrough"] = [mk_bin, str(mk_yaml), str(out), "--no-copy-tokenizer"]
        tools["mergekit passthrough"] += ["--quiet", "--no-write-model-card"]
    size = sum(f.stat().st_size for f in post.iterdir())
    files = len(list(post.glob("*.safetensors")))
    what = "the fixed cost of a run" if size_gb == 0 else f"{size / 1e9:.2f} GB per model"
    print(f"\n== {what}, {files} weight file(s), {layers} layers, restoring {lo}:{hi} ==")
    # warm the page cache: read every input once, then one untimed run of each tool
    subprocess.run(
        ["cat", *map(str, base.iterdir()), *map(str, post.iterdir())],
        stdout=subprocess.DEVNULL,
        check=True,
    )
    results: dict[str, list[Run]] = {name: [] for name in tools}
    for rnd in range(repeat + 1):
        for name, cmd in tools.items():
            shutil.rmtree(out, ignore_errors=True)
            os.sync()
            r = timed(cmd, env)
            if rnd:  # round 0 warms up
                results[name].append(r)
    shutil.rmtree(out, ignore_errors=True)
    report(results, goals=size_gb > 0)
    return results


def report(results: dict[str, list[Run]], goals: bool = True) -> None:
    print(
        f"{'tool':<22} {'median s':>9} {'min s':>7} {'max s':>7} {'CPU s':>7} {'peak RSS MiB':>13}"
    )
    for name, runs in results.items():
        walls = [r[0] for r in runs]
        cpu = statistics.median(r[1] for r in runs)
        rss = max(r[2] for r in runs)
        print(
            f"{name:<22} {statistics.median(walls):>9.3f} {min(walls):>7.3f} {max(walls):>7.3f} "
            f"{cpu:>7.3f} {rss:>13.0f}"
        )
    med = {n: statistics.median(r[0] for r in runs) for n, runs in results.items()}
    low = {n: min(r[0] for r in runs) for n, runs in results.items()}
    for name, goal in GOALS.items() if goals else ():
        ratio, ratio_min = med[name] / med["cp -r"], low[name] / low["cp -r"]
        verdict = "met" if ratio <= goal else "NOT met"
        print(
            f"{name + ' / cp -r':<30} = {ratio:.2f}x median, {ratio_min:.2f}x min   "
            f"(goal <= {goal}x: {verdict})"
        )
    if "mergekit passthrough" in results:
        t = med["layergraft restore"] / med["mergekit passthrough"]
        rss = max(r[2] for r in results["layergraft restore"])
        rss /= max(r[2] for r in results["mergekit passthrough"])
        print(f"{'layergraft restore / mergekit':<30} = {t:.2f}x time (goal <= 0.5x), ", end="")
        print(f"{rss:.2f}x peak RSS (goal <= 0.25x)")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--sizes", default="0,0.4,1.0", help="GB per model, comma-separated (0: fixed cost)"
    )
    ap.add_argument("--shards", default="1,5", help="weight files per model, comma-separated")
    ap.add_argument("--repeat", type=int, default=5, help="timed runs per tool (median, min)")
    ap.add_argument(
        "--workdir", type=Path, help="where pairs are kept between runs (default: temp)"
    )
    ap.add_argument("--mergekit-venv", type=Path, default=Path(".venv-mergekit"))
    ap.add_argument(
        "--no-bytecode-cache",
        action="store_true",
        help="run the tools with the environment as it is (no .pyc cache where "
        "PYTHONDONTWRITEBYTECODE is set)",
    )
    ap.add_argument("--build-only", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    sizes = [float(s) for s in args.sizes.split(",")]
    shard_counts = [int(s) for s in args.shards.split(",")]
    if args.build_only:  # child process: keeps numpy and the writer out of the measuring parent
        print(json.dumps(build_pair(args.build_only, sizes[0], shard_counts[0])))
        return

    mk_bin = shutil.which("mergekit-yaml") or str(args.mergekit_venv / "bin" / "mergekit-yaml")
    if not Path(mk_bin).exists():
        print("mergekit: not installed (make bench installs it); comparing with cp -r only")
        mk_bin = None
    print(f"load average before: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="lg-bench-restore-"))
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if not args.no_bytecode_cache:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    print(f"bytecode cache: {'off' if args.no_bytecode_cache else env['PYTHONPYCACHEPREFIX']}")
    try:
        for size_gb in sizes:
            for shards in [1] if size_gb == 0 else shard_counts:
                bench_one(work, size_gb, shards, args.repeat, mk_bin, env)
                if args.workdir is None:  # keep at most one pair on disk and in the cache
                    for p in work.glob("pair-*"):
                        shutil.rmtree(p, ignore_errors=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\nload average after: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")


if __name__ == "__main__":
    main()
