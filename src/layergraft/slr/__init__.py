"""Selective Layer Restoration: base layers restored into the post-trained model.

Reading order: ``pair`` (is this a base/post pair?) -> ``restore`` (on disk: pure byte copies;
``mergekit`` exports the same recipe) -> ``soup`` (the weight-interpolation baseline) ->
``swap`` (a hybrid in memory, undone exactly) -> ``crc_prompts`` and ``crc`` (the proxy task:
validity V and diversity H from the first answer token) -> ``runner`` and ``engines`` (every
interval scored with prefix reuse) -> ``selection`` (the paper's rule) -> ``sweep`` (the
command, end to end: ``journal``, ``worker``, ``assemble``, ``plan``); ``ppl_proxy`` scores
intervals by perplexity instead of CRC.
"""
