"""The ``layergraft`` command: argument parsing, printing and exit codes — no logic.

Every command is a thin shell over a function of the Python API. A user mistake
(:class:`~layergraft.errors.LayergraftError`, a usage error, or an environment failure such
as a full disk) becomes one line on stderr and exit code 2; anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from layergraft import __version__
from layergraft.errors import LayergraftError

Handler = Callable[[argparse.Namespace], int]
_ENV_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (problem + where to look) and exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


# ------------------------------------------------------------------------------ commands


def _cmd_inspect(args: argparse.Namespace) -> int:
    from layergraft.inspect import format_inspect, inspect_model

    info = inspect_model(args.model, allow_pickle=args.allow_pickle)
    if args.json:
        _print_json(info)
    else:
        print(format_inspect(info))
    return 0


def _cmd_toy_path(args: argparse.Namespace) -> int:
    from layergraft.toy import toy_paths

    base, post = toy_paths()
    print(base)
    print(post)
    return 0


def _cmd_toy_build(args: argparse.Namespace) -> int:
    from layergraft.toy import build_pair

    result = build_pair(args.out, seed=args.seed, progress=not args.quiet)
    _print_json(result)
    return 0


# ------------------------------------------------------------------------------ parser


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="layergraft",
        description="Training-free, layer-level surgery on Hugging Face causal LMs. "
        "Layer ranges are 0-based and half-open: 2:5 means layers 2, 3, 4.",
    )
    p.add_argument("--version", action="version", version=f"layergraft {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details (INFO)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    s = sub.add_parser("inspect", help="describe a checkpoint: family, layers, sizes, shards, chat template")
    s.add_argument("model", metavar="MODEL", help="model directory, .gguf file or hub id")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.add_argument("--allow-pickle", action="store_true", help="accept pickle-only (.bin) checkpoints (runs code from the file)")
    s.set_defaults(func=_cmd_inspect)

    t = sub.add_parser("toy", help="the bundled toy base/post-trained pair")
    tsub = t.add_subparsers(dest="toy_command", metavar="ACTION", parser_class=_Parser)
    tsub.required = True
    tp = tsub.add_parser("path", help="print the shipped pair's directories (base, then post)")
    tp.set_defaults(func=_cmd_toy_path)
    tb = tsub.add_parser("build", help="rebuild the toy pair from scratch (about 15 minutes on 2 cores)")
    tb.add_argument("--out", required=True, metavar="DIR", help="output directory (gets base/ and post/)")
    tb.add_argument("--seed", type=int, default=0, help="random seed (default 0: the shipped pair)")
    tb.add_argument("--quiet", action="store_true", help="no progress bars")
    tb.set_defaults(func=_cmd_toy_build)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="layergraft: %(levelname)s: %(message)s",
        stream=sys.stderr,
    )
    logging.captureWarnings(True)
    prog = f"layergraft {args.command}"
    try:
        return args.func(args)
    except LayergraftError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:
        if e.errno in _ENV_ERRNOS:
            where = f" ({e.filename})" if e.filename else ""
            print(f"{prog}: error: {e.strerror}{where}; free space or fix permissions and run again (nothing was kept)", file=sys.stderr)
            return 2
        raise
    except KeyboardInterrupt:
        print(f"{prog}: interrupted (nothing was kept)", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
