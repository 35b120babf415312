"""Command modules. Each has ``register(sub)``; ``layergraft.cli`` calls them in this order."""

MODULES = ("demo", "model", "slr", "generate", "prune")
