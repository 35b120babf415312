"""User-facing errors.

Why a hierarchy of its own: the CLI must tell a user's mistake (bad path, bad range,
mismatched models) from a bug. Anything derived from :class:`LayergraftError` is printed
as one line (problem + fix) with exit code 2; every other exception keeps its traceback,
because then the bug is ours.
"""

from __future__ import annotations


class LayergraftError(Exception):
    """A mistake in the user's input. The message names the problem *and* the fix."""

    exit_code = 2


class InputError(LayergraftError):
    """A path, file or model that cannot be used as given (missing, corrupt, unsupported)."""


class RangeError(LayergraftError):
    """A malformed layer range (empty, reversed, overlapping, out of bounds, unparsable)."""


class MismatchError(LayergraftError):
    """Two models that must share an architecture/shape do not."""


class OutputError(LayergraftError):
    """The output location cannot be written as asked (exists, inside an input, ...)."""


class ArchitectureError(LayergraftError):
    """An architecture we cannot map onto pre / layers / post."""


class NonFiniteError(InputError):
    """A weight that would be used or written holds NaN or Inf."""
