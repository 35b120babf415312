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


def _parse_size(text: str) -> int:
    """'5GB', '500MB', '2GiB', '1000' -> bytes (argparse type)."""
    import re

    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?)B?\s*", text, re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size; write e.g. 5GB or 500MB")
    base = 1024 if m.group(3) else 1000
    power = " KMGT".index(m.group(2).upper() or " ")
    return int(float(m.group(1)) * base**power)


def _merge_recipe(
    args: argparse.Namespace, operation: str, required: Sequence[str]
) -> dict[str, Any]:
    """CLI flags override the recipe's values; the union must give every required key."""
    from layergraft.recipe import load_recipe

    values: dict[str, Any] = load_recipe(args.recipe, operation) if args.recipe else {}
    for key in ("base", "post", "layers", "alpha", "embed_from", "head_from", "max_shard_size"):
        v = getattr(args, key, None)
        if v is not None:
            values[key] = v
    missing = [k for k in required if values.get(k) is None]
    if missing:
        flag = "--" + missing[0].replace("_", "-")
        raise LayergraftError(f"{flag} is required (give it on the command line or in --recipe)")
    if isinstance(values.get("max_shard_size"), str):
        values["max_shard_size"] = _parse_size(values["max_shard_size"])
    return values


def _cmd_restore(args: argparse.Namespace) -> int:
    from layergraft.api import restore
    from layergraft.io.provenance import command_line

    v = _merge_recipe(args, "restore", ("base", "post", "layers"))
    prov = restore(
        v["base"],
        v["post"],
        v["layers"],
        args.out,
        embed_from=v.get("embed_from", "post"),
        head_from=v.get("head_from", "post"),
        force=args.force,
        max_shard_bytes=v.get("max_shard_size"),
        hash_inputs=args.hash_inputs,
        export_mergekit=args.export_mergekit,
        allow_pickle=args.allow_pickle,
        progress=not args.quiet,
        command=command_line(),
    )
    d = prov["details"]
    print(
        f"wrote {args.out}: layers {d['layers']} from base ({d['tensors_from']['base']} tensors), "
        f"{d['tensors_from']['post']} tensors from post; embeddings from {d['embed_from']}, head from {d['head_from']}"
    )
    return 0


def _add_pair_args(s: argparse.ArgumentParser) -> None:
    s.add_argument(
        "--base", metavar="B", help="pre-trained base model (directory, .gguf or hub id)"
    )
    s.add_argument("--post", metavar="P", help="post-trained model (directory, .gguf or hub id)")


def _add_output_args(s: argparse.ArgumentParser) -> None:
    s.add_argument(
        "--out", required=True, metavar="DIR", help="output model directory (written atomically)"
    )
    s.add_argument(
        "--force",
        action="store_true",
        help="replace DIR if it exists (only once the new one is complete)",
    )
    s.add_argument(
        "--max-shard-size",
        type=_parse_size,
        metavar="SIZE",
        help="shard size, e.g. 5GB (default: like the post model)",
    )
    s.add_argument(
        "--hash-inputs",
        action="store_true",
        help="record full sha256 of input weight files (reads them all)",
    )
    s.add_argument(
        "--allow-pickle",
        action="store_true",
        help="accept pickle-only (.bin) checkpoints (runs code from the file)",
    )
    s.add_argument("--quiet", action="store_true", help="no progress bar")


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

    s = sub.add_parser(
        "inspect", help="describe a checkpoint: family, layers, sizes, shards, chat template"
    )
    s.add_argument("model", metavar="MODEL", help="model directory, .gguf file or hub id")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.add_argument(
        "--allow-pickle",
        action="store_true",
        help="accept pickle-only (.bin) checkpoints (runs code from the file)",
    )
    s.set_defaults(func=_cmd_inspect)

    r = sub.add_parser(
        "restore",
        help="copy decoder layer ranges from the base into the post model (Selective Layer Restoration)",
        description="Write the post-trained model with the decoder layers in --layers copied, bit-identically, "
        "from the base model. Ranges are 0-based, end excluded: 2:5 = layers 2,3,4; several as 0:2,5:7.",
    )
    _add_pair_args(r)
    r.add_argument(
        "--layers", metavar="RANGES", help="layer ranges to take from the base, e.g. 2:5 or 0:2,5:7"
    )
    r.add_argument(
        "--embed-from", choices=("post", "base"), help="who supplies the embeddings (default post)"
    )
    r.add_argument(
        "--head-from",
        choices=("post", "base"),
        help="who supplies lm_head and the final norm (default post)",
    )
    r.add_argument(
        "--recipe",
        metavar="FILE.yaml",
        help="read base/post/layers/... from a YAML recipe (flags override)",
    )
    r.add_argument(
        "--export-mergekit",
        metavar="FILE",
        help="also write the equivalent mergekit passthrough YAML",
    )
    _add_output_args(r)
    r.set_defaults(func=_cmd_restore)

    t = sub.add_parser("toy", help="the bundled toy base/post-trained pair")
    tsub = t.add_subparsers(dest="toy_command", metavar="ACTION", parser_class=_Parser)
    tsub.required = True
    tp = tsub.add_parser("path", help="print the shipped pair's directories (base, then post)")
    tp.set_defaults(func=_cmd_toy_path)
    tb = tsub.add_parser(
        "build", help="rebuild the toy pair from scratch (about 15 minutes on 2 cores)"
    )
    tb.add_argument(
        "--out", required=True, metavar="DIR", help="output directory (gets base/ and post/)"
    )
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
