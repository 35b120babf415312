"""``--threads N|auto`` (issue 33): the rule as a pure function, the flag on every command that
runs a model, its refusals, and the count really reaching torch — through the CLI, and through
the hook that applies it when torch is imported later. No timings here:
``benchmarks/bench_threads.py`` measures them (docs/bench/threads.json)."""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
from importlib import resources

import pytest

from layergraft.cli import build_parser, main
from layergraft.models import threads
from layergraft.models.threads import auto_threads, parse_threads, resolve_threads
from layergraft.toy import toy_paths


@pytest.mark.parametrize(
    "cores,load,want",
    [
        (2, 0.0, 2),  # idle: every core
        (2, 0.2, 2),  # background noise is not a taken core
        (2, 0.3, 1),  # another process working at all takes its core
        (2, 1.0, 1),
        (2, 2.0, 1),  # at least 1
        (2, 10.0, 1),
        (1, 0.0, 1),
        (16, 3.1, 13),  # 3 busy cores and noise
        (16, 3.3, 12),
        (8, 0.0, 8),
        (4, -0.5, 4),  # a negative reading never adds cores
    ],
)
def test_the_rule(cores, load, want):
    assert auto_threads(cores, load) == want


def test_parsing_the_count():
    assert parse_threads("auto") == parse_threads(" AUTO ") == "auto"
    assert parse_threads("3") == parse_threads(3) == 3
    for bad, message in [("0", "at least 1, not 0"), ("-1", "at least 1, not -1"), ("x", "neither"), ("1.5", "neither")]:  # fmt: skip
        with pytest.raises(ValueError, match=message):
            parse_threads(bad)


def test_auto_reads_cores_and_load_and_keeps_an_exported_omp_num_threads(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "usable_cores", lambda: 4)
    monkeypatch.setattr(threads, "other_load", lambda window=0.2: 1.6)
    n, why = resolve_threads("auto")
    assert n == 2 and "4 usable cores" in why and "1.6 busy" in why
    assert resolve_threads(3) == (3, "given")
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert resolve_threads("auto") == (3, "auto: OMP_NUM_THREADS is set")
    assert resolve_threads(1)[0] == 1  # an explicit count wins over the environment


def test_measurements_are_plausible():
    assert threads.usable_cores() >= 1
    load = threads.other_load(0.05)
    assert 0.0 <= load <= threads.usable_cores() + 0.5


def _placement_commands():
    """(name, parser) of every subcommand with the placement group (it has --device)."""
    out = []

    def walk(prefix, parser):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    if any("--device" in a.option_strings for a in sub._actions):
                        out.append((f"{prefix} {name}".strip(), sub))
                    walk(f"{prefix} {name}", sub)

    walk("", build_parser())
    return out


def test_every_command_that_runs_a_model_has_threads_with_auto_default():
    commands = _placement_commands()
    assert {"crc", "sweep", "generate", "compare", "prune", "ppl", "demo"} <= {
        c for c, _ in commands
    }
    for name, sub in commands:
        assert "--threads N" in sub.format_help(), name
        assert sub.get_default("threads") == "auto", name


@pytest.mark.parametrize("value", ["0", "-1", "x", ""])
def test_a_bad_count_is_one_line_and_exit_2(value, capsys):
    with pytest.raises(SystemExit) as e:
        main(["crc", "M", f"--threads={value}"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1
    assert err.startswith("layergraft crc: error: argument --threads: ")
    assert "give" in err and "(see layergraft crc --help)" in err


@pytest.fixture
def restore_threads():
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_the_cli_applies_the_count_and_logs_it(tmp_path, caplog, capsys, restore_threads):
    import torch

    digits = resources.files("layergraft") / "data" / "crc" / "digits.jsonl"
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(digits.read_text().splitlines(keepends=True)[:2]))
    _, post = toy_paths()
    torch.set_num_threads(2)
    with caplog.at_level(logging.INFO, logger="layergraft.models.threads"):
        assert main(["crc", str(post), "--prompts", str(prompts), "--threads", "1"]) == 0
    assert torch.get_num_threads() == 1
    assert "torch threads: 1 (given)" in caplog.text
    capsys.readouterr()


def test_applied_when_torch_is_imported_later():
    """In a fresh interpreter, as the CLI runs: the count is set when torch is imported, also
    after transformers has asked ``find_spec("torch")`` without importing it, and nothing is
    left in the environment for child processes."""
    code = (
        "import importlib.util, os, sys\n"
        "from layergraft.models.threads import apply_threads\n"
        "assert apply_threads(1) is None and 'torch' not in sys.modules\n"
        "importlib.util.find_spec('torch')\n"
        "import torch\n"
        "print(torch.get_num_threads(), torch.get_num_interop_threads(), os.environ.get('OMP_NUM_THREADS'))\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "OMP_NUM_THREADS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)  # fmt: skip
    assert out.stdout.split() == ["1", "1", "None"]
