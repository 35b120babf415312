"""Evaluating a model: token-level perplexity (``perplexity``) and lm-evaluation-harness on
the model in memory, with bundled offline tasks (``harness``)."""
