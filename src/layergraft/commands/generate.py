"""Generation and metrics commands: ``generate``, ``diversity``, ``compare``."""

from __future__ import annotations

from typing import Any


def register(sub: Any) -> None:
    """Add this area's subcommands to ``sub`` (an argparse subparsers object)."""
