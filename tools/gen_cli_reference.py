"""Regenerate docs/cli.md from the CLI's own --help texts (so the reference cannot drift).

python tools/gen_cli_reference.py          # rewrite docs/cli.md
python tools/gen_cli_reference.py --check  # exit 1 if docs/cli.md is out of date
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "cli.md"


def _subparsers(p: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser]]:
    out = []
    for action in p._actions:  # argparse keeps no public handle on subcommands
        if isinstance(action, argparse._SubParsersAction):
            out += list(action.choices.items())
    return out


def render() -> str:
    os.environ["COLUMNS"] = "100"  # stable wrapping
    from layergraft.cli import build_parser

    root = build_parser()
    parts = [
        "# CLI reference",
        "",
        "Generated from `layergraft --help` by `tools/gen_cli_reference.py`; do not edit by hand.",
        "Layer ranges are 0-based and half-open everywhere: `2:5` means layers 2, 3, 4.",
        "",
        "```text",
        root.format_help().rstrip(),
        "```",
    ]

    def walk(prefix: str, parser: argparse.ArgumentParser) -> None:
        for name, sub in _subparsers(parser):
            parts.extend(
                ["", f"## `{prefix} {name}`", "", "```text", sub.format_help().rstrip(), "```"]
            )
            walk(f"{prefix} {name}", sub)

    walk("layergraft", root)
    return "\n".join(parts) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    text = render()
    if args.check:
        if not DOC.exists() or DOC.read_text() != text:
            print(f"{DOC} is out of date: run python tools/gen_cli_reference.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(text)
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
