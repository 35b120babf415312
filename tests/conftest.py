"""Shared test configuration.

``--slow`` runs the tests marked ``slow`` (long end-to-end runs, more property-test examples);
without it they are skipped so the default suite stays within minutes on 2 cores.
"""

from __future__ import annotations

import os

import pytest

# Tests never touch the network or the user's caches.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--slow", action="store_true", default=False, help="also run tests marked slow"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _isolated_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Converted checkpoints (gguf, pickle) go to a per-session cache, never ~/.cache."""
    monkeypatch.setenv("LAYERGRAFT_CACHE", str(tmp_path_factory.getbasetemp() / "lg-cache"))
