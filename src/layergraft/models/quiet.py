"""Keeping transformers and accelerate quiet while layergraft loads models.

Why: layergraft shows its own progress and one-line messages; transformers' load reports
(expected here: a pruned model's ghost keys, an offload the user asked for) and its own
progress bars would bury them.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' load report and progress bars (layergraft shows its own
    progress; ghost keys in a pruned model's load report are expected)."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    # accelerate's "some parameters are on the meta device because they were offloaded":
    # the offload the user asked for with --device-map, not news
    acc = logging.getLogger("accelerate.big_modeling")
    acc_level = acc.level
    acc.setLevel(logging.ERROR)
    try:
        yield
    finally:
        acc.setLevel(acc_level)
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()
