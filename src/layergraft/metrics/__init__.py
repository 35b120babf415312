"""Metrics (perplexity, ...). Import-light: submodules import torch only when called."""
