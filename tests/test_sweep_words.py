"""`sweep` names its picks with the main job's words, and a hybrid it writes without
validation says so in results.json and on stderr."""

from __future__ import annotations

import json

from layergraft.cli import main
from layergraft.toy import toy_paths
from tiny import write_few_crc_prompts


def test_restore_best_without_validation_carries_a_caveat(tmp_path, capsys):
    base, post = toy_paths()
    prompts = write_few_crc_prompts(tmp_path / "p.jsonl", per_category=2)
    out, hybrid = tmp_path / "sw", tmp_path / "hybrid"
    rc = main(["sweep", "--base", str(base), "--post", str(post), "--out", str(out),
               "--prompts", str(prompts), "--starts", "5,6", "--restore-best", str(hybrid),
               "--quiet", "--threads", "1"])  # fmt: skip
    assert rc == 0
    cap = capsys.readouterr()
    res = json.loads((out / "results.json").read_text())
    assert (hybrid / "config.json").is_file()
    caveat = next(c for c in res["caveats"] if "not validated" in c)
    assert str(hybrid) in caveat and f"warning: {caveat}" in cap.err
    assert "paper rule's pick:" in cap.out and "format rule's pick:" in cap.out
    written = [ln for ln in cap.out.splitlines() if ln.startswith("written hybrid:")]
    assert len(written) == 1 and "rule's pick" in written[0] and str(hybrid) in written[0]
    # the name printed is the active rule's pick over every family, the hybrid on disk
    best = res["best"][res["rule"]["name"]]
    assert f" {best['label']} " in written[0]
