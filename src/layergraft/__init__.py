"""layergraft: training-free, layer-level surgery on Hugging Face causal LMs.

Heavy imports (torch, transformers) are deliberately lazy: ``import layergraft`` and pure-IO
commands such as ``layergraft restore`` must start fast.
"""

from __future__ import annotations

__version__ = "0.1.0"

from layergraft.errors import LayergraftError  # noqa: E402

__all__ = ["__version__", "LayergraftError", "load_model"]


def __getattr__(name: str):  # lazy: keeps `import layergraft` free of torch/transformers
    if name == "load_model":
        from layergraft.pruning_api import load_model

        return load_model
    raise AttributeError(f"module 'layergraft' has no attribute {name!r}")
