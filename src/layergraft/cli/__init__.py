"""The ``layergraft`` command line: one module per area, shared option groups in
:mod:`layergraft.cli.options`, the entry point in :mod:`layergraft.cli.app`."""

from layergraft.cli.app import build_parser, main

__all__ = ["build_parser", "main"]
