"""Restore wall time and peak memory vs `cp -r` and vs mergekit's passthrough, side by side.

Builds a random-weight Llama base/post pair (~1 GB each in bf16 by default; written with
layergraft's own streaming writer, so building it needs little memory), then runs, each in a
fresh process and several times, warm page cache for all:

* ``cp -r POST OUT``                       (the floor: copying the post model as is)
* ``layergraft restore --layers R``        (SLR on disk; hashes its output while writing)
* ``mergekit-yaml passthrough.yaml OUT``   (the same hybrid with mergekit, if installed)

and prints the medians and the ratios (goals: restore <= 1.2x cp, <= 0.5x mergekit time,
<= 0.25x mergekit peak RSS). mergekit is looked up as ``mergekit-yaml`` on PATH or in the
virtualenv given by ``--mergekit-venv`` (``make bench`` creates one in .venv-mergekit).

    python benchmarks/bench_restore.py [--size-gb 1.0] [--repeat 3] [--workdir DIR]
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


def build_pair(root: Path, size_gb: float) -> tuple[Path, Path, int]:
    """A Llama-shaped pair of random bf16 weights of about ``size_gb`` each."""
    import torch

    from layergraft.checkpoint.writer import OutTensor, write_checkpoint

    hidden, inter, vocab, heads = 2048, 5632, 32000, 16
    per_layer = 4 * hidden * hidden + 3 * hidden * inter + 2 * hidden
    layers = max(2, round((size_gb * 1e9 / 2 - 2 * vocab * hidden) / per_layer))
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
    dirs = []
    for role, seed in (("base", 1), ("post", 2)):
        d = root / role
        if not (d / "config.json").exists():
            d.mkdir(parents=True, exist_ok=True)
            g = torch.Generator().manual_seed(seed)

            def make(shape, g=g):
                return lambda: (
                    torch.randn(shape, generator=g)
                    .to(torch.bfloat16)
                    .view(-1)
                    .view(torch.uint8)
                    .numpy()
                )

            tensors = [
                OutTensor(n, "BF16", s, 2 * int(torch.Size(s).numel()), load=make(s))
                for n, s in shapes.items()
            ]
            write_checkpoint(d, tensors, max_shard_bytes=500_000_000)
            (d / "config.json").write_text(json.dumps(cfg, indent=2))
        dirs.append(d)
    return dirs[0], dirs[1], layers


def timed(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of ``cmd`` run in a fresh process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"command failed: {' '.join(cmd)}\n{err[-2000:]}")
    return wall, ru.ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size-gb", type=float, default=1.0, help="size of each model (default 1.0)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument(
        "--workdir", type=Path, help="where the pair is kept between runs (default: a temp dir)"
    )
    ap.add_argument("--mergekit-venv", type=Path, default=Path(".venv-mergekit"))
    ap.add_argument("--build-only", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.build_only:  # child process: keeps torch out of the measuring parent
        print(json.dumps(build_pair(args.build_only, args.size_gb)[2]))
        return

    work = args.workdir or Path(tempfile.mkdtemp(prefix="lg-bench-restore-"))
    # Build in a child: a parent holding torch would make every forked child *start* with
    # a large resident set, and ru_maxrss would report that instead of the tool's own peak.
    built = subprocess.run(
        [
            sys.executable,
            __file__,
            "--build-only",
            str(work / "pair"),
            "--size-gb",
            str(args.size_gb),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    layers = int(built.stdout.strip().splitlines()[-1])
    base, post = work / "pair" / "base", work / "pair" / "post"
    lo, hi = layers // 4, layers // 4 + max(1, layers // 4)
    ranges = f"{lo}:{hi}"
    size = sum(f.stat().st_size for f in post.iterdir())
    lg = [
        sys.executable,
        "-m",
        "layergraft",
        "restore",
        "--base",
        str(base),
        "--post",
        str(post),
        "--layers",
        ranges,
        "--quiet",
    ]
    mk_bin = shutil.which("mergekit-yaml") or str(args.mergekit_venv / "bin" / "mergekit-yaml")
    have_mk = Path(mk_bin).exists()
    mk_yaml = work / "passthrough.yaml"
    if have_mk:
        from layergraft.slr.restore import mergekit_yaml

        mk_yaml.write_text(mergekit_yaml(str(base), str(post), [(lo, hi)], layers, "bfloat16"))

    out = work / "out"
    results: dict[str, list[tuple[float, float]]] = {
        "cp -r": [],
        "layergraft restore": [],
        "restore --no-hash": [],
        "mergekit passthrough": [],
    }
    # warm the page cache once, then alternate the tools so drift hits all of them alike
    subprocess.run(
        ["cat", *map(str, base.glob("*")), *map(str, post.glob("*"))],
        stdout=subprocess.DEVNULL,
        check=True,
    )
    for _ in range(args.repeat):
        for name, cmd in (
            ("cp -r", ["cp", "-r", str(post), str(out)]),
            ("layergraft restore", [*lg, "--out", str(out)]),
            ("restore --no-hash", [*lg, "--no-hash", "--out", str(out)]),
            (
                "mergekit passthrough",
                [
                    mk_bin,
                    str(mk_yaml),
                    str(out),
                    "--no-copy-tokenizer",
                    "--quiet",
                    "--no-write-model-card",
                ],
            ),
        ):
            if name.startswith("mergekit") and not have_mk:
                continue
            shutil.rmtree(out, ignore_errors=True)
            os.sync()
            results[name].append(timed(cmd))
    shutil.rmtree(out, ignore_errors=True)

    print(
        f"pair: {layers}-layer Llama, {size / 1e9:.2f} GB per model (bf16), restoring layers {ranges}"
    )
    print(f"{'tool':<22} {'median s':>9} {'peak RSS MiB':>13}")
    med = {}
    for name, runs in results.items():
        if not runs:
            print(f"{name:<22} {'(not installed: make bench installs it)':>9}")
            continue
        med[name] = (statistics.median(r[0] for r in runs), max(r[1] for r in runs))
        print(f"{name:<22} {med[name][0]:>9.2f} {med[name][1]:>13.0f}")
    r = med["layergraft restore"]
    cp = med["cp -r"][0]
    print(
        f"restore / cp time           = {r[0] / cp:.2f}x   (goal <= 1.2x; includes sha256 of the output)"
    )
    print(f"restore --no-hash / cp time = {med['restore --no-hash'][0] / cp:.2f}x")
    if "mergekit passthrough" in med:
        m = med["mergekit passthrough"]
        print(f"restore / mergekit time     = {r[0] / m[0]:.2f}x   (goal <= 0.5x)")
        print(f"restore / mergekit RSS      = {r[1] / m[1]:.2f}x   (goal <= 0.25x)")
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
