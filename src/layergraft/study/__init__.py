"""The main job: the SLR study of a base/post pair as one resumable plan of steps.

Read :mod:`.slr` (the steps and the job), then :mod:`.job` (how a step is skipped, continued
or rerun), :mod:`.selection` (the words for what was selected), :mod:`.settings` (task sizes
and budgets, in one place) and :mod:`.plan` (``--dry-run``). This package sits above
``slr/``, ``gen/`` and ``report/`` and is imported by none of them.
"""
