"""The Python API: every public function of layergraft, from the package that owns it.

Each CLI command is a thin shell over one of these; nothing here has logic of its own. Where
each one lives (read the package's ``__init__`` docstring first):

==================  ==============================================================
checkpoints         :func:`inspect_model`, :func:`open_checkpoint`, :func:`verify_model_dir`
models              :func:`load_model`, :func:`load_tokenizer`
SLR (``slr/``)      :func:`restore`, :func:`soup`, :func:`crc`, :func:`sweep`,
                    :func:`sweep_ppl`, :func:`swapped_layers`, :func:`souped`, :func:`diff`
pruning             :func:`scores`, :func:`prune`, :func:`compare_recovery`
generation          :func:`generate`, :func:`diversity`, :func:`compare`, :class:`SamplingSettings`
evaluation          :func:`ppl`, :func:`lm_eval`
the main job        :func:`slr` (the whole SLR study of a pair, resumable), :class:`StudySettings`
toy pair, demo      :func:`toy_paths`, :func:`build_toy_pair`, :func:`run_demo`
==================  ==============================================================

Importing this module imports no torch, transformers or matplotlib: those load when a
function needs them, so ``layergraft restore`` starts in a fraction of a second.
"""

from __future__ import annotations

from layergraft.checkpoint.describe import inspect_model
from layergraft.checkpoint.reader import open_checkpoint
from layergraft.demo import run_demo
from layergraft.evaluate.harness import lm_eval
from layergraft.evaluate.perplexity import ppl
from layergraft.gen.compare import compare
from layergraft.gen.generate import generate
from layergraft.gen.sampling import SamplingSettings
from layergraft.gen.score import diversity
from layergraft.models.load import load_model, load_tokenizer
from layergraft.models.verify import verify_model_dir
from layergraft.prune.compare import compare_recovery
from layergraft.prune.pipeline import prune
from layergraft.prune.scores import scores
from layergraft.slr.hybrid.diff import diff
from layergraft.slr.hybrid.restore import restore
from layergraft.slr.hybrid.soup import soup, souped
from layergraft.slr.hybrid.swap import swapped_layers
from layergraft.slr.proxy.crc import crc
from layergraft.slr.sweep.run import sweep, sweep_ppl
from layergraft.study.settings import StudySettings
from layergraft.study.slr import slr
from layergraft.toy import build_pair as build_toy_pair
from layergraft.toy import toy_paths

__all__ = [
    "SamplingSettings",
    "StudySettings",
    "build_toy_pair",
    "compare",
    "compare_recovery",
    "crc",
    "diff",
    "diversity",
    "generate",
    "inspect_model",
    "lm_eval",
    "load_model",
    "load_tokenizer",
    "open_checkpoint",
    "ppl",
    "prune",
    "restore",
    "run_demo",
    "scores",
    "slr",
    "souped",
    "soup",
    "swapped_layers",
    "sweep",
    "sweep_ppl",
    "toy_paths",
    "verify_model_dir",
]
