"""Option groups every command module shares, each defined once: placement (``--device``,
``--dtype``, ``--device-map``, ``--threads``), output-directory flags, ``--quiet``, ``--json``;
plus sizes, recipes and JSON printing; the one-line-error :class:`Parser` (defined in
:mod:`layergraft.cli.parser`) is importable from here too. Command modules register their
subcommands with ``register(sub)``."""

from __future__ import annotations

import argparse
import json
import math
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from layergraft.cli.parser import Parser  # noqa: F401 (re-exported: the command modules import it from here)
from layergraft.errors import LayergraftError
from layergraft.models.placement import DTYPES
from layergraft.models.threads import parse_threads
from layergraft.recipe import RECIPE_KEYS, load_recipe


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


def parse_size(text: str) -> int:
    """'5GB', '500MB', '2GiB', '1000' -> bytes (argparse type)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?)B?\s*", text, re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size; write e.g. 5GB or 500MB")
    base = 1024 if m.group(3) else 1000
    power = " KMGT".index(m.group(2).upper() or " ")
    return int(float(m.group(1)) * base**power)


def merge_recipe(
    args: argparse.Namespace, operation: str, required: Sequence[str]
) -> dict[str, Any]:
    """CLI flags override the recipe's values; the union must give every required key."""
    values: dict[str, Any] = (
        load_recipe(args.recipe, operation) if getattr(args, "recipe", None) else {}
    )
    for key in RECIPE_KEYS[operation]:
        v = getattr(args, key, None)
        if v is not None:
            values[key] = v
    missing = [k for k in required if values.get(k) is None]
    if missing:
        flag = "--" + missing[0].replace("_", "-")
        raise LayergraftError(f"{flag} is required (give it on the command line or in --recipe)")
    if isinstance(values.get("max_shard_size"), str):
        values["max_shard_size"] = parse_size(values["max_shard_size"])
    return values


def output_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The API keyword arguments that the flags of :func:`add_output_args` map to."""
    return {
        "force": args.force,
        "hash_inputs": args.hash_inputs,
        "hash_outputs": not args.no_hash,
        "fsync": args.fsync,
        "allow_pickle": args.allow_pickle,
        "progress": not args.quiet,
    }


def add_pair_args(s: argparse.ArgumentParser) -> None:
    s.add_argument(
        "--base", metavar="B", help="pre-trained base model (directory, .gguf or hub id)"
    )
    s.add_argument("--post", metavar="P", help="post-trained model (directory, .gguf or hub id)")


def add_output_args(s: argparse.ArgumentParser) -> None:
    """Flags of every command that writes a model directory."""
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
        type=parse_size,
        metavar="SIZE",
        help="shard size, e.g. 5GB (default: like the input)",
    )
    s.add_argument(
        "--hash-inputs",
        action="store_true",
        help="record full sha256 of input weight files (reads them all)",
    )
    s.add_argument(
        "--no-hash",
        action="store_true",
        help="skip the sha256 of written weights (raw kernel-copy speed; verify then checks "
        "sizes only; the NaN/Inf scan still runs)",
    )
    s.add_argument(
        "--fsync",
        action="store_true",
        help="flush written files to the device before the final rename (power-loss durability)",
    )
    s.add_argument(
        "--allow-pickle",
        action="store_true",
        help="accept pickle-only (.bin) checkpoints (runs code from the file)",
    )
    add_quiet_arg(s)


def device_map_arg(text: str) -> Any:
    """``--device-map``: a strategy accelerate knows (``auto``, ``balanced``,
    ``balanced_low_0``, ``sequential``), one device for everything (``cpu``, ``cuda:0``), or
    an explicit map as a JSON object or a path to a JSON file (module name -> device, where a
    device may be ``"disk"`` for layers that do not fit in memory)."""
    from pathlib import Path

    t = text.strip()
    if t.startswith("{") or t.endswith(".json"):
        src = t
        if not t.startswith("{"):
            try:
                src = Path(t).read_text()
            except OSError as e:
                raise argparse.ArgumentTypeError(
                    f"--device-map {t}: cannot read it ({e.strerror}); give an existing JSON file"
                ) from e
        try:
            obj = json.loads(src)
        except json.JSONDecodeError as e:
            raise argparse.ArgumentTypeError(
                f"--device-map is not valid JSON ({e.msg}); give e.g. "
                '\'{"model.layers.0": "cpu", "model.layers.1": "disk"}\''
            ) from e
        if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
            raise argparse.ArgumentTypeError(
                "--device-map JSON must be an object mapping module names to devices"
            )
        return obj
    return t


def add_placement_args(s: argparse.ArgumentParser) -> None:
    """``--device`` / ``--dtype`` / ``--device-map`` / ``--threads``: the same meaning and
    defaults on every command that runs a model (see :mod:`layergraft.models.placement` and
    :mod:`layergraft.models.threads`)."""
    g = s.add_argument_group("placement (every command that runs a model)")
    g.add_argument(
        "--device",
        metavar="DEV",
        help="auto (default: cuda when present, else cpu), cpu, cuda, cuda:1, ...",
    )
    g.add_argument(
        "--dtype",
        choices=DTYPES,
        default="auto",
        help="compute dtype; auto (default) = the checkpoint's on a GPU, float32 on the CPU",
    )
    g.add_argument(
        "--device-map",
        type=device_map_arg,
        metavar="MAP",
        help="place layers with accelerate instead of --device: auto, balanced, cpu, cuda:0, or "
        'a JSON object/file mapping module names to devices ("disk" offloads a layer)',
    )
    g.add_argument(
        "--threads",
        type=threads_arg,
        default="auto",
        metavar="N",
        help="CPU threads of torch: a count, or auto (default) = the usable cores minus those "
        "other processes keep busy, at least 1 (an exported OMP_NUM_THREADS is kept); "
        "more threads than free cores makes torch many times slower, not faster",
    )


def threads_arg(text: str) -> int | str:
    """``--threads``: ``auto`` or a count of at least 1 (applied by the CLI before the command
    runs: :func:`layergraft.models.threads.apply_threads`)."""
    try:
        return parse_threads(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def placement_kwargs(
    args: argparse.Namespace, models: Sequence[Any] | None = None
) -> dict[str, Any]:
    """The API keyword arguments that :func:`add_placement_args` maps to, checked first
    (:func:`~layergraft.models.placement.check_placement`: the device exists here, an
    explicit map names real modules of ``models``, by default the command's ``MODEL`` or
    ``--base``/``--post``). Every command builds these before it calls the API, so a
    placement this machine cannot honour is refused before anything is loaded or written."""
    from layergraft.checkpoint.reader import as_checkpoint
    from layergraft.models.placement import check_placement

    if models is None:
        models = [getattr(args, k) for k in ("model", "base", "post") if getattr(args, k, None)]
    if isinstance(args.device_map, dict):  # its keys are checked on the models themselves
        allow = getattr(args, "allow_pickle", False)
        models = [m if Path(m).is_dir() else as_checkpoint(m, allow) for m in models]
    else:
        models = []
    check_placement(args.device, args.dtype, args.device_map, models=models)
    return {"device": args.device, "dtype": args.dtype, "device_map": args.device_map}


def positive_int(text: str) -> int:
    """argparse type of counts that must be at least 1 (``--batch-size``, ``--n``): 0 or a
    negative number is refused, not silently read as "the default"."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number; give e.g. 8") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}; give a positive count")
    return value


def finite_float(
    min: float | None = None,
    max: float | None = None,
    *,
    inclusive: tuple[bool, bool] = (True, True),
    example: str = "0.5",
) -> Any:
    """argparse type of every real-number flag: a finite number within the bounds (``inclusive``:
    whether ``min`` and ``max`` themselves are allowed), else one line naming the flag, exit 2.
    Why one factory: NaN compares false with every bound, so ``v < 0`` lets it through to a
    solver (a ``torch.linalg.lstsq`` traceback after the calibration) or a rule that selects
    nothing."""
    lo_in, hi_in = inclusive
    if min is not None and max is not None:
        where = f"in {'[' if lo_in else '('}{min:g}, {max:g}{']' if hi_in else ')'}"
    elif min is not None or max is not None:
        where = f"{'>' if min is not None else '<'}{'=' if (lo_in if min is not None else hi_in) else ''} {min if min is not None else max:g}"  # fmt: skip
    else:
        where = "finite"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number; give one {where}, e.g. {example}") from None  # fmt: skip
        low = min is not None and (value < min or (value == min and not lo_in))
        high = max is not None and (value > max or (value == max and not hi_in))
        if not math.isfinite(value) or low or high:
            what = "is not a finite number" if not math.isfinite(value) else "is out of range"
            raise argparse.ArgumentTypeError(
                f"{text} {what}; give a number {where}, e.g. {example}"
            )
        return value

    parse.__name__ = "finite_float"  # argparse names the type in some messages
    return parse


def add_quiet_arg(s: argparse.ArgumentParser) -> None:
    s.add_argument("--quiet", action="store_true", help="no progress bars")


def add_json_arg(s: argparse.ArgumentParser, what: str = "print one JSON object") -> None:
    s.add_argument("--json", action="store_true", help=what)


def add_command(
    sub: Any, name: str, handler: Any, help: str, description: str | None = None
) -> argparse.ArgumentParser:
    """A subcommand ``name`` that runs ``handler(args)``."""
    p = sub.add_parser(name, help=help, description=description or help)
    p.set_defaults(func=handler)
    return p


# ---- text options of the pruning and evaluation commands (one name, one default each) ----
CALIB_TOKENS = 8192
CALIB_SEQLEN = 512
PPL_SEQLEN = 2048


class RenamedOptionWarning(UserWarning):
    """An old option name was used; it still works and names its new spelling."""


class _Renamed(argparse.Action):
    """An old option spelling: sets the new option's value and says the new name."""

    def __init__(self, *args: Any, new: str, **kwargs: Any) -> None:
        self.new = new
        super().__init__(*args, **kwargs)

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: Any = None) -> None:
        warnings.warn(
            f"{option_string} is now {self.new}; the old name still works",
            RenamedOptionWarning,
            stacklevel=2,
        )
        setattr(namespace, self.dest, values)


def add_renamed(s: argparse.ArgumentParser, old: str, new: str, dest: str, type: Any) -> None:
    """Keep ``old`` working (hidden from --help) for scripts written before ``new``."""
    s.add_argument(old, dest=dest, type=type, action=_Renamed, new=new, help=argparse.SUPPRESS)


def add_calib_args(
    s: argparse.ArgumentParser,
    flag: str = "--calib",
    default_help: str = "bundled calibration text",
) -> None:
    """Calibration text: the file, how many tokens of it, rows of how many tokens, rows per
    forward pass (prune, compare-recovery, scores)."""
    s.add_argument(
        flag,
        metavar="FILE",
        help=f"local .txt or .jsonl ('text' field) file, or hf:NAME[:CONFIG][@SPLIT] when the hub is reachable (default: {default_help})",
    )
    s.add_argument(
        "--calib-tokens",
        type=positive_int,
        default=CALIB_TOKENS,
        metavar="N",
        help=f"calibration tokens to use (default {CALIB_TOKENS})",
    )
    s.add_argument(
        "--seqlen",
        type=positive_int,
        default=CALIB_SEQLEN,
        help=f"tokens per calibration row (default {CALIB_SEQLEN}; at most the model's context)",
    )
    s.add_argument(
        "--batch-size", type=positive_int, default=4, help="rows per forward pass (default 4)"
    )


def add_ppl_args(s: argparse.ArgumentParser, flag: str | None, default_help: str) -> None:
    """Perplexity text: the file, chunk length and how many tokens (ppl, compare-recovery,
    sweep --proxy ppl)."""
    if flag is not None:
        s.add_argument(flag, metavar="FILE", help=f"text for perplexity (default: {default_help})")
    s.add_argument(
        "--ppl-seqlen",
        type=positive_int,
        default=PPL_SEQLEN,
        metavar="N",
        help=f"perplexity chunk length (default {PPL_SEQLEN}; at most the model's context)",
    )
    s.add_argument(
        "--ppl-tokens",
        type=positive_int,
        metavar="N",
        help="use the first N tokens of the text (default all)",
    )


def add_ray_args(s: argparse.ArgumentParser) -> None:
    """``--ray [ADDRESS]`` / ``--workers`` / ``--gpus-per-worker``: the work spread over a Ray
    cluster (sweep, compare); Ray is the optional extra ``layergraft[ray]``."""
    g = s.add_argument_group("Ray cluster (optional extra: pip install 'layergraft[ray]')")
    g.add_argument(
        "--ray",
        nargs="?",
        const="auto",
        metavar="ADDRESS",
        help="run on a Ray cluster: no value (auto) = the cluster this machine joined (ray start) "
        "or a new local one; or a head address such as HOST:6379. Workers load models from "
        "the same paths: every node must see the checkpoints",
    )
    g.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="with --ray: workers at once, each loading the model(s) once (default: one per GPU, "
        "or per CPU, of the cluster)",
    )
    g.add_argument(
        "--gpus-per-worker",
        type=finite_float(min=0, example="1"),
        metavar="G",
        help="with --ray: GPUs of each worker (default 1 where the cluster has GPUs, else 0; "
        "more than 1 with --device-map auto spreads one worker's models over its GPUs)",
    )


def ray_kwargs(args: argparse.Namespace) -> dict[str, Any] | None:
    """The executor's keyword arguments of :func:`add_ray_args`, or None without ``--ray``."""
    if args.ray is None:
        given = [f for f, v in (("--workers", args.workers), ("--gpus-per-worker", args.gpus_per_worker)) if v is not None]  # fmt: skip
        if given:
            raise LayergraftError(f"{given[0]} applies to --ray; add --ray or remove it")
        return None
    return {"address": args.ray, "workers": args.workers, "gpus_per_worker": args.gpus_per_worker}
