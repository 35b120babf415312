"""Shared test configuration.

``--slow`` runs the tests marked ``slow`` (long end-to-end runs, more property-test examples);
without it they are skipped so the default suite stays within minutes on 2 cores.

Determinism: hypothesis runs derandomized (the examples follow from each test's source, the
same on every run and machine; ``HYPOTHESIS_PROFILE=explore`` searches with fresh randomness),
and an exception in a helper thread fails the test that started it instead of dying there.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import pytest
from hypothesis import settings

# Tests never touch the network or the user's caches.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One torch thread unless the caller exported a count: `--threads auto` (every command's
# default) reads the machine's load at that moment, so in-process commands would compute with
# a count that changes from run to run, and results compared byte for byte with a one-thread
# subprocess (resume after a kill) differed by float rounding now and then. auto keeps an
# exported OMP_NUM_THREADS; subprocesses inherit it. The suite's models are tiny, so one
# thread costs it little.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# remote code (ghosted outputs loaded with trust_remote_code) is copied into a modules cache:
# one per test session, not ~/.cache shared with the user and with other sessions running now
_MODULES = tempfile.mkdtemp(prefix="layergraft-test-hf-modules-")
os.environ["HF_MODULES_CACHE"] = _MODULES
atexit.register(shutil.rmtree, _MODULES, ignore_errors=True)

settings.register_profile("layergraft", derandomize=True, database=None, print_blob=True)
settings.register_profile("explore", derandomize=False, database=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "layergraft"))


def pytest_configure(config: pytest.Config) -> None:
    # a helper thread's exception is otherwise only a warning at the end of the run
    config.addinivalue_line("filterwarnings", "error::pytest.PytestUnhandledThreadExceptionWarning")


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
