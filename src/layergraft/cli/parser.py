"""The ``layergraft`` argument parser: every usage error is one line and exit code 2.

Why a class of our own: argparse prints the whole usage block and reports a subcommand's
unknown flag from the top-level parser (``layergraft: error: unrecognized arguments``), whose
help does not list that subcommand's flags. Here the error comes from the parser of the
command it concerns (``layergraft sweep: error: ... (see layergraft sweep --help)``), and a
near miss of a command, a flag or a choice gets "did you mean ...?" (difflib).
"""

from __future__ import annotations

import argparse
import difflib
import re
from collections.abc import Sequence
from typing import Any, NoReturn

from layergraft.errors import InputError, LayergraftError


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (problem + where to look) and exit 2, from the
    parser of the command it concerns: ``layergraft sweep --bogus`` points at
    ``layergraft sweep --help``, and a near miss of a command, a flag or a choice gets
    "did you mean ...?"."""

    def add_subparsers(self, **kwargs: Any) -> Any:
        kwargs.setdefault("action", _Commands)
        kwargs.setdefault("parser_class", type(self))
        return super().add_subparsers(**kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {self._explain(message)} (see {self.prog} --help)\n")

    def _explain(self, message: str) -> str:
        """argparse's ``message``, with the fix it leaves out."""
        m = re.fullmatch(r"argument (--[\w-]+)(?:/\S+)?: expected one argument", message)
        if m:
            # argparse takes a value starting with '-' (--layers -1:2) for an option and
            # reports a missing value; the fix is the = form, which passes it through
            return message + f"; if the value starts with '-', write {m.group(1)}=VALUE"
        m = re.fullmatch(r"unrecognized arguments: (.*)", message)
        if m:
            first = next((a for a in m.group(1).split() if a.startswith("-")), "")
            flags = [o[2:] for a in self._actions if a.help is not argparse.SUPPRESS
                     for o in a.option_strings if o.startswith("--")]  # fmt: skip
            near = difflib.get_close_matches(first.split("=")[0].lstrip("-"), flags, n=1)
            return message + (f"; did you mean --{near[0]}?" if first and near else "")
        m = re.fullmatch(r"argument (\S+): invalid choice: (.*?) \(choose from .*\)", message)
        action = m and next((a for a in self._actions if m.group(1) in _names(a)), None)
        if m and action is not None:
            value, choices = m.group(2).strip("'\""), [str(c) for c in action.choices or ()]
            near = difflib.get_close_matches(value, choices, n=1)
            if not isinstance(action, argparse._SubParsersAction):
                return message + (f"; did you mean {near[0]!r}?" if near else "")
            fix = f"did you mean {near[0]}?" if near else f"choose one of {', '.join(choices)}"
            return f"unknown command {value!r}; {fix}"
        m = re.fullmatch(r"the following arguments are required: (\S+)", message)
        commands = [a for a in self._actions if isinstance(a, argparse._SubParsersAction)]
        if m and commands and m.group(1) in _names(commands[0]):
            return f"no command given; choose one of {', '.join(commands[0].choices)}"
        return message


def given(args: argparse.Namespace, flags: Sequence[str]) -> list[str]:
    """The ``flags`` the user typed: a flag a mode may ignore has no default (None), the
    command fills it after :func:`refuse_unused`."""
    return [f for f in flags if getattr(args, f.lstrip("-").replace("-", "_"), None) is not None]


def refuse_unused(
    args: argparse.Namespace, flags: Sequence[str], *, mode: str | None, applies: str, fix: str
) -> None:
    """Refuse, in one line naming the mode, a flag of ``flags`` that the chosen ``mode`` (None:
    a mode that uses them) ignores: a setting that silently does nothing misleads more than an
    error (``--workers`` without ``--ray`` is refused the same way)."""
    typed = given(args, flags)
    if typed and mode is not None:
        raise LayergraftError(
            f"{typed[0]} applies to {applies}, and {mode} does not use it; remove {typed[0]} or {fix}"
        )


def _names(action: argparse.Action) -> set[str]:
    """The names argparse may call ``action`` by in an error message."""
    return {
        *action.option_strings,
        "/".join(action.option_strings),
        str(action.metavar),
        action.dest,
    }


class _Commands(argparse._SubParsersAction):
    """Subcommands whose unknown arguments are reported by the subcommand's own parser: plain
    argparse hands them up and the top-level parser reports them, pointing at
    ``layergraft --help``, which does not list the subcommand's flags."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: Any = None) -> None:
        super().__call__(parser, namespace, values, option_string)
        extras = vars(namespace).pop(argparse._UNRECOGNIZED_ARGS_ATTR, None)
        if extras:
            self.choices[values[0]].error(f"unrecognized arguments: {' '.join(extras)}")


def named_paths(items: list[str], flag: str, example: str) -> dict[str, str]:
    """``NAME=PATH`` items (``--models``, ``--also``) as a dict, each name once."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise InputError(f"{flag} item {item!r} is not NAME=PATH; write e.g. {example}")
        if name in out:
            raise InputError(f"{flag} names {name!r} twice; give each model a distinct name")
        out[name] = path
    return out
