"""How many hybrids get scored, and which one is chosen.

Reading order: ``config`` (every setting of a sweep in one frozen object) -> ``engines`` (the
work units and the prefix-reuse / swap engines) -> ``worker`` (a loaded pair scoring units) ->
``journal`` (the durable, resumable rows) -> ``distributed`` (units on Ray) -> ``selection``
(the paper's rule and the format rule) -> ``assemble`` (results from rows) -> ``validate``
(candidates checked by generation) -> ``plan`` (``--dry-run``) -> ``run`` (``sweep`` end to end).
"""
