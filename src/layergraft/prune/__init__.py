"""Layer pruning with Ghosted Layers: choose layers, calibrate, fit a repair, cut, write.

Reading order: ``importance`` (angular distance, block influence, cosine) -> ``cut`` (which
layers, and cutting them) -> ``calibrate`` (float64 Gram statistics at the gaps, streamed) ->
``recover`` (the closed-form operators) -> ``fold`` and ``ghost`` (a repair folded into weights,
or kept as a ghost module) -> ``model`` (all of it on a loaded model) -> ``write`` (the pruned
directory, streamed) -> ``job`` (the shared prologue of the commands) -> the commands:
``scores``, ``pipeline`` (``prune``) and ``compare`` (``compare-recovery``).
"""
