"""Generation and its metrics: sampling k replies per prompt, scoring them, comparing models.

Reading order: ``tasks`` and ``answers`` (the prompt sets and their answers) -> ``sampling``
(decoding settings; one random stream per sample) -> ``jobs`` and ``records`` (what to
generate; resumable JSONL records) -> ``engine`` (the transformers backend; ``vllm`` the
optional one) -> ``generate`` (the command) -> ``metrics/`` and ``score`` (diversity and
quality per prompt, bootstrap CIs over prompts) -> ``model_cache`` and ``compare`` (several
models and decoding baselines side by side).
"""
