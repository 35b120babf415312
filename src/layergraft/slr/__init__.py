"""Selective Layer Restoration: base layers restored into the post-trained model.

Three sub-packages, read in this order:

* :mod:`~layergraft.slr.hybrid` — how a hybrid is made: on disk (``restore``: pure byte
  copies; ``soup``: the weight interpolation, over all layers or an interval) and in memory
  (``swap``, ``souped``), with ``pair`` (is this a base/post pair?), ``diff`` (how far
  post-training moved each layer) and the ``mergekit`` export.
* :mod:`~layergraft.slr.proxy` — what scores a model: CRC (validity V, diversity H and the
  format score V_end, exactly from packed first-answer continuations, or sampled), perplexity,
  or a user's function.
* :mod:`~layergraft.slr.sweep` — how many hybrids get scored and which one is chosen: the
  typed settings, units and engines, the journal, workers and Ray, the selection rules, the
  validation of candidates by generation, and ``sweep`` itself (``run``).
"""
