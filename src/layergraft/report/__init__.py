"""Every report layergraft writes, rendered from a results dict (never the other way round).

``sweep`` (results.json/csv, heatmaps, Pareto plot), ``compare`` (the models x metrics table
and plots), ``scores`` (the block-score plot), ``demo`` (report.md and a self-contained
report.html); ``plotting`` picks matplotlib's file backend once.
"""
