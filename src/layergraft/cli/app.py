"""The ``layergraft`` command: argument parsing, printing and exit codes — no logic.

Every command is a thin shell over a function of :mod:`layergraft.api`; each area's
subcommands live in a module of :mod:`layergraft.cli` (``model``, ``slr``, ``gen``,
``prune``, ``demo``) and share the option groups of :mod:`layergraft.cli.options`; the
placement group's ``--threads`` is applied here, once, before the command runs. A user mistake
(:class:`~layergraft.errors.LayergraftError`, a usage error, or an environment failure such
as a full disk) becomes one line on stderr and exit code 2; anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
import warnings
from collections.abc import Sequence

from layergraft.cli import demo, gen, model, prune, slr, study, sweep
from layergraft.cli.options import Parser
from layergraft.errors import LayergraftError
from layergraft.models.threads import apply_threads
from layergraft.version import __version__

#: the areas, in the order ``layergraft --help`` lists their commands
AREAS = (study, demo, model, slr, sweep, gen, prune)

_ENV_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="layergraft",
        description="Training-free, layer-level surgery on Hugging Face causal LMs. "
        "Layer ranges are 0-based and half-open: 2:5 means layers 2, 3, 4.",
    )
    p.add_argument("--version", action="version", version=f"layergraft {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details (INFO)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for area in AREAS:
        area.register(sub)
    return p


def _one_line_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    line: str | None = None,
) -> str:
    """Warnings as one line ("DiscoveryWarning: ..."), like errors: the default format adds
    our source file, line number and a line of code, which are noise to a user."""
    return f"{category.__name__}: {message}"


def _quiet_library_bars() -> None:
    """``--quiet`` silences transformers' own bars too ("Loading weights" while a hybrid is
    loaded for validation). Both libraries read this switch when they are imported; where they
    already are (a caller's process), their own switch is turned off instead."""
    if "huggingface_hub" in sys.modules or "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    else:
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"


def main(argv: Sequence[str] | None = None) -> int:
    # Warnings go through logging from the first moment, parsing included: a warning raised
    # while parsing (a renamed option) is then a whole line like every other one. Printed
    # by Python's own hook it got our one-line format without the newline, and the next
    # message ran on.
    warnings.formatwarning = _one_line_warning
    logging.basicConfig(
        level=logging.WARNING, format="layergraft: %(levelname)s: %(message)s", stream=sys.stderr
    )
    logging.captureWarnings(True)
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:  # a first contact: the commands, not a missing-argument error
        parser.print_help()
        return 0
    args = parser.parse_args(argv)
    if args.verbose:
        logging.getLogger().setLevel(logging.INFO)
    prog = f"layergraft {args.command}"
    if getattr(args, "threads", None) is not None:  # every command of the placement group
        apply_threads(args.threads)
    if getattr(args, "quiet", False):
        _quiet_library_bars()
    try:
        return args.func(args)
    except LayergraftError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return e.exit_code
    except BrokenPipeError:
        # `layergraft toy path | head -1`: the reader left early; like `cat`, stop quietly.
        # stdout is pointed at devnull so the interpreter's final flush cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as e:
        if e.errno in _ENV_ERRNOS:
            where = f" ({e.filename})" if e.filename else ""
            print(
                f"{prog}: error: {e.strerror}{where}; free space or fix permissions and run again (nothing was kept)",
                file=sys.stderr,
            )
            return 2
        raise
    except KeyboardInterrupt:
        print(f"{prog}: interrupted (nothing was kept)", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
