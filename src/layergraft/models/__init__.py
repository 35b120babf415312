"""Models in memory: one loader, one placement vocabulary, offloaded and ghosted models.

Reading order: ``placement`` (``--device`` / ``--dtype`` / ``--device-map``) -> ``load``
(:func:`~layergraft.models.load.load_model`, the one loader, and its tokenizer) -> ``batching``
(left padding and padding-aware positions for every batched forward) -> ``offload`` (layers
accelerate keeps on disk) -> ``ghost`` (loading a pruned model's ghost operators without its
remote code; the module itself is ``ghost_remote/``) -> ``verify`` (``layergraft verify``).
"""
