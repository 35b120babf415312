"""What scores a model in a sweep: a proxy turns a model (or a hybrid) into one row of numbers.

Reading order: ``crc_prompts`` (the CRC task as data) -> ``ends`` (a model's end markers:
what "the reply stops" means) -> ``crc_scoring`` (prompts to packed batches, log-probs to V,
H and V_end) -> ``crc`` (the exact estimator and the ``crc`` command; :class:`CrcProxy` is
the same scoring as the sweep sees it) -> ``crc_sampled`` (the sampled estimator) -> ``ppl``
(perplexity on a text) -> ``custom`` (a user's function of the model).
"""
