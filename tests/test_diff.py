"""``layergraft diff``: per layer and part, the numbers a direct torch computation gives.

The pair is a tiny Llama and a copy in which known tensors were moved by known amounts
(written with the streaming writer, single file, while the base is sharded), so every cell is
checked against ``torch`` on the concatenated tensors, and every untouched cell must be an
exact 0 change with cosine exactly 1.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from layergraft.checkpoint.reader import open_checkpoint
from layergraft.checkpoint.writer import OutTensor, write_checkpoint
from layergraft.cli.app import main
from layergraft.errors import NonFiniteError
from layergraft.slr.hybrid.diff import diff
from layergraft.toy import toy_paths
from tiny import save_tiny

N = 4
L = "model.layers"
#: tensor -> how the post model moves it
MOVES = {
    f"{L}.1.mlp.down_proj.weight": lambda t, g: t + 0.05 * torch.randn(t.shape, generator=g),
    f"{L}.2.self_attn.q_proj.weight": lambda t, g: 1.5 * t,
    f"{L}.2.input_layernorm.weight": lambda t, g: t + 0.01,
    f"{L}.3.self_attn.k_proj.weight": lambda t, g: -t,  # cosine -1 for this tensor
    "model.embed_tokens.weight": lambda t, g: t * 0.9,
}


def _write_pair(root: Path, dtype: torch.dtype = torch.float32) -> tuple[Path, Path]:
    base = save_tiny("llama", root / "base", num_layers=N, seed=1, max_shard_size="20KB")
    if dtype != torch.float32:  # re-save the base in dtype
        ck = open_checkpoint(base)
        tensors = {n: ck.get_tensor(n).to(dtype) for n in ck.tensors}
        shutil.rmtree(base)
        base.mkdir()
        (base / "config.json").write_text(json.dumps(ck.config))
        write_checkpoint(base, [OutTensor.from_torch(n, t) for n, t in tensors.items()])
    ck = open_checkpoint(base)
    post = root / "post"
    post.mkdir()
    (post / "config.json").write_text(json.dumps(ck.config))
    g = torch.Generator().manual_seed(0)
    out = []
    for name in ck.tensors:
        t = ck.get_tensor(name)
        if name in MOVES:
            t = MOVES[name](t.double(), g).to(t.dtype)
        out.append(OutTensor.from_torch(name, t))
    write_checkpoint(post, out)
    return base, post


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return _write_pair(tmp_path_factory.mktemp("pair"))


def _expected(base: Path, post: Path, names: list[str]) -> tuple[float, float]:
    b, p = open_checkpoint(base), open_checkpoint(post)
    bv = torch.cat([b.get_tensor(n).double().reshape(-1) for n in names])
    pv = torch.cat([p.get_tensor(n).double().reshape(-1) for n in names])
    rel = (torch.linalg.vector_norm(pv - bv) / torch.linalg.vector_norm(bv)).item()
    cos = (torch.dot(pv, bv) / (torch.linalg.vector_norm(pv) * torch.linalg.vector_norm(bv))).item()
    return rel, cos


def test_cells_match_torch_and_untouched_cells_are_exact(pair: tuple[Path, Path]) -> None:
    base, post = pair
    res = diff(base, post, progress=False)
    assert res["num_layers"] == N and res["family"] == "llama"
    assert res["parts"] == ["attn", "mlp", "norms"]
    ad = open_checkpoint(post).adapter
    names = list(open_checkpoint(post).tensors)
    moved_cells = {(int(n.split(".")[2]), ad.layer_part(n)) for n in MOVES if n.startswith(L)}
    assert moved_cells == {(1, "mlp"), (2, "attn"), (2, "norms"), (3, "attn")}
    for row in res["layers"]:
        i = row["layer"]
        for part in ("attn", "mlp", "norms", "all"):
            cell = row[part]
            members = ad.layer_part_names(i, names, part)
            assert cell["tensors"] == len(members)
            assert cell["numel"] == sum(open_checkpoint(base).tensors[n].numel for n in members)
            touched = part == "all" and any((i, p) in moved_cells for p in ("attn", "mlp", "norms"))
            if (i, part) in moved_cells or touched:
                rel, cos = _expected(base, post, members)
                assert cell["rel_change"] == pytest.approx(rel, rel=1e-12)
                assert cell["cosine"] == pytest.approx(cos, rel=1e-12)
                assert cell["rel_change"] > 0 and cell["cosine"] < 1
            else:
                assert cell["rel_change"] == 0.0 and cell["cosine"] == 1.0
                assert cell["abs_change"] == 0.0
    # the known amounts themselves
    q = res["layers"][2]["attn"]
    assert q["rel_change"] < 0.5  # q_proj scaled by 1.5, diluted by k, v, o
    assert res["outside"]["embeddings"]["rel_change"] == pytest.approx(0.1, rel=1e-6)
    assert res["outside"]["embeddings"]["cosine"] == pytest.approx(1.0, abs=1e-12)
    assert res["outside"]["final_norm"]["rel_change"] == 0.0
    assert res["outside"]["head"]["rel_change"] == 0.0  # llama: untied head, untouched
    every = list(open_checkpoint(base).tensors)
    rel, cos = _expected(base, post, every)
    assert res["model"]["rel_change"] == pytest.approx(rel, rel=1e-12)
    assert res["model"]["cosine"] == pytest.approx(cos, rel=1e-12)
    changed = {i for i, _ in moved_cells}
    assert set(res["ranking"]) == changed and 0 not in res["ranking"]  # unchanged: unranked
    assert res["unchanged_layers"] == sorted(set(range(N)) - changed)
    assert res["identical"] is False
    assert res["skipped"] == [] and res["plot"] is None
    assert res["inputs"]["base"]["files"] and "0-based" in res["convention"]["layers"]
    json.dumps(res, allow_nan=False)  # JSON-ready, no NaN/Inf


def test_single_tensor_known_amounts() -> None:
    from layergraft.slr.hybrid.diff import tensor_sums

    t = torch.randn(7, 5, generator=torch.Generator().manual_seed(3))
    s = tensor_sums(t, -t, chunk=4)  # chunks smaller than the tensor
    assert s.row()["cosine"] == pytest.approx(-1.0) and s.row()["rel_change"] == pytest.approx(2.0)
    s = tensor_sums(t, 1.5 * t, chunk=8)
    assert s.row()["rel_change"] == pytest.approx(0.5) and s.row()["cosine"] == pytest.approx(1.0)
    z = torch.zeros(3)
    assert tensor_sums(z, z).row()["rel_change"] == 0.0 and tensor_sums(z, z).row()["cosine"] == 1.0
    assert tensor_sums(z, z + 1).row()["rel_change"] is None


def test_bf16_pair(tmp_path: Path) -> None:
    base, post = _write_pair(tmp_path, torch.bfloat16)
    res = diff(base, post, progress=False)
    assert res["dtypes"] == ["BF16"]
    assert res["layers"][0]["all"]["rel_change"] == 0.0
    rel, cos = _expected(base, post, [f"{L}.1.mlp.{p}.weight" for p in ("gate_proj", "up_proj", "down_proj")])  # fmt: skip
    assert res["layers"][1]["mlp"]["rel_change"] == pytest.approx(rel, rel=1e-12)
    assert res["layers"][1]["mlp"]["cosine"] == pytest.approx(cos, rel=1e-12)


def test_nonfinite_input_is_refused(pair: tuple[Path, Path], tmp_path: Path) -> None:
    base, post = pair
    bad = Path(shutil.copytree(post, tmp_path / "nan_post"))
    name = f"{L}.2.mlp.up_proj.weight"
    e = open_checkpoint(bad).tensors[name]
    with open(e.file, "r+b") as f:
        f.seek(e.offset + 4 * 10)
        f.write(torch.tensor([float("nan")]).numpy().tobytes())
    with pytest.raises(NonFiniteError, match=rf"{name.replace('.', '[.]')}.*nan_post.*NaN"):
        diff(base, bad, progress=False)


def test_toy_pair_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base, post = toy_paths()
    png = tmp_path / "diff.png"
    assert main(["diff", str(base), str(post), "--json", "--plot", str(png), "--quiet"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["num_layers"] == 8 and len(res["layers"]) == 8
    assert all(row[p]["rel_change"] > 0 for row in res["layers"] for p in res["parts"])
    assert res["tied_embeddings"] is False and set(res["outside"]) == {
        "embeddings",
        "final_norm",
        "head",
    }
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and res["plot"] == str(png)
    assert not list(tmp_path.glob(".*tmp*"))
    # the table
    assert main(["diff", str(base), str(post), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "layer     attn      mlp    norms      all" in out
    assert sum(1 for ln in out.splitlines() if ln[:5].strip().isdigit()) == 8
    assert "most changed layers" in out


@pytest.mark.parametrize("case", ["mismatched", "missing", "plot-dir-missing"])
def test_bad_input_is_one_line_exit_2(
    case: str, pair: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base, post = pair
    argv = ["diff", str(base), str(post), "--quiet"]
    if case == "mismatched":
        argv[2] = str(save_tiny("llama", tmp_path / "deep3", num_layers=3))
    elif case == "missing":
        argv[1] = str(tmp_path / "nope")
    else:
        argv += ["--plot", str(tmp_path / "no" / "such" / "diff.png")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("layergraft diff: error: ")
    assert {"mismatched": "layers", "missing": "nope", "plot-dir-missing": "does not exist"}[
        case
    ] in err
