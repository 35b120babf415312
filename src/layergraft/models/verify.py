"""``layergraft verify``: is an output directory still what layergraft wrote?

Why: weights get copied between machines, synced, partially downloaded. The provenance file
records every written weight file's size and sha256 (computed while writing), so a later
check needs no trust in timestamps: recompute, compare, then prove the model loads.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from layergraft.checkpoint.provenance import PROVENANCE_NAME, read_provenance
from layergraft.checkpoint.reader import sha256_file
from layergraft.errors import InputError
from layergraft.models.load import load_model


def verify_model_dir(path: str | os.PathLike[str], *, load: bool = True) -> dict[str, Any]:
    """Check sizes and sha256 of the weight files against ``layergraft.json``, then (with
    ``load``) load the model and run one forward pass. Returns a report; ``ok`` is False and
    ``problems`` lists what is wrong when anything is (a corrupted output is not an error of
    the command, it is its answer)."""
    d = Path(path)
    if not d.is_dir():
        raise InputError(f"{d}: no such directory; give an output directory written by layergraft")
    try:
        prov = read_provenance(d)
    except ValueError as e:
        raise InputError(
            f"{d / PROVENANCE_NAME} is not valid JSON; the directory's provenance is damaged"
        ) from e
    if prov is None:
        raise InputError(
            f"{d} has no {PROVENANCE_NAME}; verify checks directories written by layergraft"
        )
    problems: list[str] = []
    files = prov.get("outputs", {}).get("weight_files", [])
    checked = []
    for rec in files:
        f = d / rec["name"]
        if not f.is_file():
            problems.append(f"{rec['name']}: missing")
            continue
        size = f.stat().st_size
        if size != rec["size"]:
            problems.append(f"{rec['name']}: size {size}, expected {rec['size']}")
            continue
        if rec.get("sha256"):
            digest = sha256_file(f)
            if digest != rec["sha256"]:
                problems.append(
                    f"{rec['name']}: sha256 {digest[:12]}…, expected {rec['sha256'][:12]}…"
                )
                continue
            checked.append({"name": rec["name"], "sha256": "ok"})
        else:
            checked.append(
                {"name": rec["name"], "sha256": "not recorded (written with --no-hash); size ok"}
            )
    loaded = None
    if load and not problems:
        loaded = _try_load(d, problems)
    return {
        "path": str(d),
        "ok": not problems,
        "problems": problems,
        "files": checked,
        "loads": loaded,
        "operation": prov.get("operation"),
    }


def _try_load(d: Path, problems: list[str]) -> bool:
    """Load through the same path a user would and run one forward pass."""
    try:
        import torch

        model = load_model(d, device="cpu")
        with torch.no_grad():
            out = model(input_ids=torch.tensor([[1, 2, 3]])).logits
        if not torch.isfinite(out).all():
            problems.append("the model loads but its logits are not finite")
            return False
        return True
    except Exception as e:  # any failure to load is the finding, reported as such
        problems.append(
            f"does not load: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        )
        return False
