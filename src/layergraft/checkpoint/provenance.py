"""Self-describing outputs: ``layergraft.json`` (provenance) and the model card.

Why: an output model directory outlives the shell history that made it. It must say what
was done, to which inputs (identified by hashes), with which versions and seed, so a result
can be reproduced or audited, and ``layergraft verify`` can check the weights later.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import platform
import shlex
import sys
from pathlib import Path
from typing import Any

PROVENANCE_NAME = "layergraft.json"
RECIPE_NAME = "layergraft_recipe.yaml"


def versions() -> dict[str, str]:
    """Versions of the packages that shape the numbers (no imports: metadata only;
    importlib.metadata itself is imported here, not at start-up: it costs ~13 ms)."""
    from importlib import metadata as _md

    out = {"python": platform.python_version()}
    for pkg in ("layergraft", "torch", "transformers", "safetensors", "tokenizers", "numpy"):
        with contextlib.suppress(_md.PackageNotFoundError):
            out[pkg] = _md.version(pkg)
    return out


def command_line(argv: list[str] | None = None) -> str:
    argv = list(sys.argv if argv is None else argv)
    if argv and argv[0].endswith(("layergraft", "__main__.py", "cli.py")):
        argv[0] = "layergraft"
    return shlex.join(argv)


def build_provenance(
    operation: str,
    *,
    inputs: dict[str, dict[str, Any]],
    outputs: list[dict[str, Any]],
    details: dict[str, Any] | None = None,
    seed: int | None = None,
    command: str | None = None,
) -> dict[str, Any]:
    return {
        "layergraft_version": versions().get("layergraft", "unknown"),
        "operation": operation,
        "command": command if command is not None else command_line(),
        "created_utc": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "seed": seed,
        "inputs": inputs,
        "details": details or {},
        "outputs": {"weight_files": outputs},
        "versions": versions(),
        "range_convention": "0-based, half-open [start, end), written start:end",
    }


def write_provenance(out_dir: Path, prov: dict[str, Any]) -> Path:
    p = Path(out_dir) / PROVENANCE_NAME
    p.write_text(json.dumps(prov, indent=2, sort_keys=False) + "\n")
    return p


def read_provenance(model_dir: Path) -> dict[str, Any] | None:
    p = Path(model_dir) / PROVENANCE_NAME
    if not p.is_file():
        return None
    return json.loads(p.read_text())


def model_card(title: str, summary: str, prov: dict[str, Any], extra_md: str = "") -> str:
    """A short, human-first model card: what was done, by which command, from what."""
    lines = [
        "---",
        "library_name: transformers",
        "tags: [layergraft]",
        "---",
        f"# {title}",
        "",
        summary.strip(),
        "",
        "## How it was made",
        "",
        "```bash",
        prov.get("command", ""),
        "```",
        "",
        "| input | origin | weight files |",
        "|---|---|---|",
    ]
    for role, inp in prov.get("inputs", {}).items():
        files = ", ".join(f["name"] for f in inp.get("files", []))
        lines.append(f"| {role} | `{inp.get('origin', inp.get('path', ''))}` | {files} |")
    lines += [
        "",
        "Layer ranges are 0-based and half-open: `2:5` means layers 2, 3 and 4.",
        f"Provenance (hashes, versions, seed): `{PROVENANCE_NAME}`.",
    ]
    if extra_md:
        lines += ["", extra_md.strip()]
    v = prov.get("versions", {})
    lines += [
        "",
        f"Made with layergraft {v.get('layergraft', '?')}, transformers {v.get('transformers', '?')}.",
    ]
    return "\n".join(lines) + "\n"


def write_model_card(out_dir: Path, text: str) -> Path:
    p = Path(out_dir) / "README.md"
    p.write_text(text)
    return p
