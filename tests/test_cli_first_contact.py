"""The command line's first contact (issue 33): bare ``layergraft`` lists the commands; a
misspelled command, flag or choice gets "did you mean ...?"; an unknown flag of a subcommand
is reported by that subcommand, pointing at its own --help (plain argparse reports it from the
top-level parser, whose help does not list the subcommand's flags). Every refusal is one line
and exit code 2.

The subprocess test is the honest check of what a user sees; the others run in-process
through :func:`layergraft.cli.main`, the same code path."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from layergraft.cli import main


def run(argv, capsys):
    """``main(argv)`` -> (exit code, stdout, stderr)."""
    capsys.readouterr()
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def refused(argv, capsys):
    """The one stderr line of a refusal with exit code 2."""
    rc, out, err = run(argv, capsys)
    assert rc == 2, (rc, err)
    assert out == "" and len(err.splitlines()) == 1, err
    return err.strip()


def test_bare_layergraft_lists_the_commands():
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    p = subprocess.run([sys.executable, "-m", "layergraft"], capture_output=True, text=True, env=env)  # fmt: skip
    assert p.returncode == 0 and p.stderr == ""
    assert p.stdout.startswith("usage: layergraft")
    for command in ("sweep", "restore", "generate", "prune", "demo"):
        assert f"\n    {command} " in p.stdout


def test_no_command_among_options_names_the_commands(capsys):
    line = refused(["-v"], capsys)
    assert line.startswith("layergraft: error: no command given; choose one of ")
    assert "sweep, " in line and line.endswith("(see layergraft --help)")


@pytest.mark.parametrize(
    "typo,want",
    [("swep", "sweep"), ("restor", "restore"), ("generat", "generate"), ("prun", "prune")],
)
def test_a_misspelled_command_gets_did_you_mean(typo, want, capsys):
    line = refused([typo], capsys)
    assert (
        line
        == f"layergraft: error: unknown command '{typo}'; did you mean {want}? (see layergraft --help)"
    )


def test_an_unknown_command_lists_them(capsys):
    line = refused(["xyzzy"], capsys)
    assert line.startswith("layergraft: error: unknown command 'xyzzy'; choose one of ")
    assert "sweep" in line and "did you mean" not in line


def test_a_subcommands_unknown_flag_points_at_its_own_help(capsys):
    line = refused(["sweep", "--bogus"], capsys)
    assert (
        line
        == "layergraft sweep: error: unrecognized arguments: --bogus (see layergraft sweep --help)"
    )


@pytest.mark.parametrize(
    "argv,want",
    [
        (["sweep", "--bse", "B"], "--base"),
        (["sweep", "--postt=P"], "--post"),
        (["restore", "--out", "o", "--layer-s", "4:7"], "--layers"),
        (["crc", "M", "--threds", "1"], "--threads"),
    ],
)
def test_a_misspelled_flag_gets_did_you_mean(argv, want, capsys):
    line = refused(argv, capsys)
    assert line.startswith(f"layergraft {argv[0]}: error: unrecognized arguments: ")
    assert line.endswith(f"; did you mean {want}? (see layergraft {argv[0]} --help)")


def test_nested_commands_name_themselves(capsys):
    line = refused(["toy", "pth"], capsys)
    assert (
        line
        == "layergraft toy: error: unknown command 'pth'; did you mean path? (see layergraft toy --help)"
    )
    line = refused(["toy", "path", "--bogus"], capsys)
    assert (
        line
        == "layergraft toy path: error: unrecognized arguments: --bogus (see layergraft toy path --help)"
    )


def test_a_misspelled_choice_gets_did_you_mean(capsys):
    line = refused(["sweep", "--search", "halvng"], capsys)
    assert line.startswith("layergraft sweep: error: argument --search: invalid choice: 'halvng'")
    assert line.endswith("; did you mean 'halving'? (see layergraft sweep --help)")
    # no close choice: the plain message, unchanged
    line = refused(["sweep", "--search", "random"], capsys)
    assert "did you mean" not in line and "invalid choice: 'random'" in line


def test_a_value_starting_with_a_dash_still_gets_its_hint(capsys):
    line = refused(["restore", "--layers", "-1:2"], capsys)
    assert "write --layers=VALUE" in line and line.endswith("(see layergraft restore --help)")
