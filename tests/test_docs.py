"""Documentation generated from the code must match it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_cli_reference_is_current():
    r = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "gen_cli_reference.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr


def test_readme_numbers_are_the_demo_numbers():
    r = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "render_results.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr + r.stdout


def test_readme_starts_with_the_two_commands():
    lines = [ln.strip() for ln in (ROOT / "README.md").read_text().splitlines()[:12]]
    assert any(ln.startswith("make demo") for ln in lines)
    assert any(ln.startswith("make test") for ln in lines)
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci
