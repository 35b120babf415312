"""The demo's steps through the Python API, on any base/post pair given by path or hub id.

    python examples/slr_pipeline.py                                   # the bundled toy pair
    python examples/slr_pipeline.py --base meta-llama/Llama-3.1-8B \\
        --post meta-llama/Llama-3.1-8B-Instruct --dtype bfloat16 --out runs/llama

On a GPU machine add `--device cuda` (or `--device-map auto` for several GPUs / offload).
Steps: inspect -> CRC sweep and selection (with the soup baseline) -> restore the selected
interval to disk -> compare generations of post / base / SLR / soup -> prune the post model
with every recovery method.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import layergraft.api as lg


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--base", help="pre-trained model (path, hub id or .gguf); default: toy base")
    ap.add_argument("--post", help="post-trained model; default: toy post")
    ap.add_argument("--out", type=Path, default=Path("runs/pipeline"))
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--device", default=None)
    ap.add_argument("--device-map", default=None)
    ap.add_argument("--task", default="qa", help="creative, qa, reasoning or a JSONL file")
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--prune", type=int, default=2, help="number of contiguous layers to remove")
    args = ap.parse_args()
    toy_base, toy_post = lg.toy_paths()
    base, post = args.base or str(toy_base), args.post or str(toy_post)
    out = args.out

    for name, m in (("base", base), ("post", post)):
        info = lg.inspect_model(m)
        print(
            f"{name}: {info['family']}, {info['num_layers']} layers, {info['params_total']:,} parameters"
        )

    res = lg.sweep(
        base,
        post,
        out / "sweep",
        method="both",
        dtype=args.dtype,
        device=args.device,
        device_map=args.device_map,
        force=True,
    )
    sel = res["selected"]
    print(
        f"post V={res['references']['post']['V']:.3f} H_norm={res['references']['post']['H_norm']:.3f}"
    )
    if sel is None:
        print("no interval keeps 90% of the post model's validity; nothing to restore")
        return
    print(f"selected {sel['interval']}: V={sel['V']:.3f} H_norm={sel['H_norm']:.3f}")

    lg.restore(base, post, sel["interval"], out / "slr", force=True)
    models = {"post": post, "base": base, "slr": str(out / "slr")}
    soup = (res.get("soup") or {}).get("selected")
    if soup:
        lg.soup(base, post, soup["alpha"], out / "soup", force=True)
        models["soup"] = str(out / "soup")

    placement = {"dtype": args.dtype, "device": args.device, "device_map": args.device_map}
    cmp = lg.compare(models, args.task, out / "compare", n=args.samples, **placement)
    for run, r in cmp["runs"].items():
        print(
            run,
            {
                k: round(v, 3)
                for k, v in r["mean"].items()
                if k in ("valid_rate", "accuracy", "vendi", "self_bleu")
            },
        )

    pr = lg.compare_recovery(
        post, auto=args.prune, metric="angular", dtype=args.dtype, device=args.device,
        device_map=args.device_map,
    )  # fmt: skip
    print(f"pruning {pr['removed']} ({pr['ppl_definition'].split(' —')[0]}):")
    for row in pr["rows"]:
        print(f"  {row['method']:<10} PPL {row['ppl']:.2f}  params {row['params']:,}")


if __name__ == "__main__":
    main()
