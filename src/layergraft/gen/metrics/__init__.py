"""Diversity and quality metrics of generations (import-light: numpy, sacrebleu and the
embedder load when a metric is computed)."""
