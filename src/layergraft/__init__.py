"""layergraft: training-free, layer-level surgery on Hugging Face causal LMs.

Heavy imports (torch, transformers) are deliberately lazy: ``import layergraft`` and pure-IO
commands such as ``layergraft restore`` must start fast.
"""

from __future__ import annotations

from layergraft.errors import LayergraftError
from layergraft.version import __version__

__all__ = ["__version__", "LayergraftError", "load_model"]


def __getattr__(name: str):
    """``layergraft.load_model``, imported on first use: ``import layergraft`` (which every
    ``import layergraft.x`` runs first) must stay free of torch and transformers."""
    if name == "load_model":
        from layergraft.models.load import load_model

        return load_model
    raise AttributeError(f"module 'layergraft' has no attribute {name!r}")
