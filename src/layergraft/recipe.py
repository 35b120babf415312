"""YAML recipes: the same operation as the CLI flags, as a file that can be reviewed,
versioned and replayed. Every output directory gets the recipe that made it.

Why strict: a misspelled key (``embed_form``) silently ignored would produce a different
model than the user asked for, so unknown keys are refused with the closest valid key.

Paths in a recipe (``base``, ``post``) are read relative to the recipe file, like the paths in
any configuration file, so a recipe works from whatever directory it is run. A value that names
nothing there is passed on as written: a hub id (``org/name``), or a path relative to the
current directory, as recipes written next to an output may hold.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any

from layergraft.errors import InputError

#: keys that name a model: a directory, a ``.gguf`` file or a hub id
PATH_KEYS = ("base", "post")

#: keys each operation accepts in a recipe (besides ``operation``)
RECIPE_KEYS: dict[str, tuple[str, ...]] = {
    "restore": ("base", "post", "layers", "parts", "embed_from", "head_from", "max_shard_size"),
    "soup": (
        "base",
        "post",
        "alpha",
        "layers",
        "parts",
        "embed_from",
        "head_from",
        "max_shard_size",
    ),  # fmt: skip
}


def load_recipe(path: str | os.PathLike[str], operation: str) -> dict[str, Any]:
    """Read and validate a recipe for ``operation``."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise InputError(f"recipe {p} not found; give the path of a YAML recipe file")
    try:
        data = yaml.safe_load(p.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise InputError(
            f"recipe {p} is not valid YAML ({type(e).__name__}); fix the syntax"
        ) from e
    if not isinstance(data, dict):
        raise InputError(f"recipe {p} must be a mapping of keys to values (key: value)")
    op = data.pop("operation", operation)
    if op != operation:
        raise InputError(
            f"recipe {p} is for '{op}', not '{operation}'; use layergraft {op} --recipe {p}"
        )
    allowed = RECIPE_KEYS[operation]
    for key in data:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = (
                f"did you mean '{close[0]}'? rename it"
                if close
                else f"remove it (allowed keys: {', '.join(allowed)})"
            )
            raise InputError(f"recipe {p}: unknown key '{key}'; {hint}")
    for key in PATH_KEYS:
        if key in data:
            data[key] = resolve_path(data[key], p.parent)
    return data


def resolve_path(value: Any, recipe_dir: Path) -> Any:
    """A recipe's model path read relative to the recipe's directory when it names something
    there; otherwise (a hub id, an absolute path, a path relative to the current directory)
    the value as written."""
    if not isinstance(value, str) or not value or Path(value).expanduser().is_absolute():
        return value
    here = recipe_dir / value
    return str(here.resolve()) if here.exists() else value


def dump_recipe(operation: str, values: dict[str, Any]) -> str:
    """A recipe that replays ``operation`` (keys in a stable order, comments on ranges)."""
    import yaml

    body = {"operation": operation}
    body.update({k: v for k, v in values.items() if v is not None})
    head = (
        f"# layergraft {operation} recipe: replay with `layergraft {operation} --recipe THIS_FILE --out DIR`\n"
        "# layer ranges are 0-based, half-open [start, end): 2:5 means layers 2, 3, 4\n"
    )
    return head + yaml.safe_dump(body, sort_keys=False)
