"""Every code block of the README and of the documentation pages runs as written.

The fenced ``bash`` and ``python`` blocks of README.md and docs/**/*.md are run on the bundled
toy pair, in a fresh temporary directory per page and in page order, as a reader would run them
in a terminal: a shell variable one block sets (``BASE=...``) is set in the page's later blocks.
A block passes when it exits with code 0. Other fences (``text``, ``yaml``, ...) are not run.

Markers, on the line right before a fence (HTML comments, invisible on the rendered page):

``<!-- doc-test: skip: REASON -->``  not run, with the reason (installs from the network, needs a
                                     cluster or hours of training); keep these few
``<!-- doc-test: slow -->``          run only with ``--slow`` (the full demo, a full sweep, a job
                                     another page already runs)
``<!-- doc-test: repo -->``          run from the repository root (the maintainers' checks)

The pages show real models; so that their blocks run here, offline on a CPU, the text of every
block goes through :data:`SUBSTITUTIONS` first (hub ids -> the toy pair, CUDA -> CPU, bfloat16 ->
float32, ``layergraft slr`` with ``--quick``, its small settings, and the README's GPU and CPU
jobs in one job directory, since on the toy pair they are the same job).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from layergraft.toy import toy_paths

ROOT = Path(__file__).resolve().parents[1]
BASE, POST = (str(p) for p in toy_paths())

#: (pattern, replacement) applied in order to the text of every block before it runs
SUBSTITUTIONS: list[tuple[str, str]] = [
    (r"meta-llama/Llama-3\.1-\d+B-Instruct", POST),
    (r"meta-llama/Llama-3\.1-\d+B", BASE),
    (r"Qwen/Qwen2\.5-0\.5B-Instruct", POST),
    (r"Qwen/Qwen2\.5-0\.5B", BASE),
    (r"--device cuda(:\d+)?", "--device cpu"),
    (r"""device=(["'])cuda(:\d+)?\1""", r"device=\1cpu\1"),
    (r"bfloat16", "float32"),
    (r"\blayergraft slr ", "layergraft slr --quick "),
    # the README's GPU job and CPU job become one toy job: the CPU line continues the GPU line's
    (r"--out llama-slr\b", "--out qwen-slr"),
]

RUN = {"bash", "python"}
#: fences that are shown, not run; anything else (sh, console, no language) must be named
SHOWN = {"text", "yaml", "json", "toml"}
MARKER = re.compile(r"<!--\s*doc-test:\s*(skip|slow|repo)\s*(?::\s*(.*?))?\s*-->")
FENCE = re.compile(r"^```(\S*)\s*$")


@dataclass(frozen=True)
class Block:
    page: str  # relative to the repository root
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    marker: str | None  # skip, slow, repo
    reason: str | None

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def blocks(path: Path) -> list[Block]:
    """The fenced blocks of a page, with the marker on the line before each."""
    out, lines, i = [], path.read_text().splitlines(), 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, lang = i, m.group(1)
        j = i + 1
        while j < len(lines) and lines[j].strip() != "```":
            j += 1
        mk = MARKER.search(lines[start - 1]) if start else None
        out.append(
            Block(
                page=path.relative_to(ROOT).as_posix(),
                line=start + 1,
                lang=lang,
                code="\n".join(lines[start + 1 : j]) + "\n",
                marker=mk.group(1) if mk else None,
                reason=mk.group(2) if mk else None,
            )
        )
        i = j + 1
    return out


ALL = [b for p in pages() for b in blocks(p)]
RUNNABLE = [b for b in ALL if b.lang in RUN]


def substitute(code: str) -> str:
    for pat, rep in SUBSTITUTIONS:
        code = re.sub(pat, rep, code)
    return code


def _param(b: Block):
    marks = []
    if b.marker == "skip":
        marks.append(pytest.mark.skip(reason=f"{b.id}: {b.reason}"))
    elif b.marker == "slow":
        marks.append(pytest.mark.slow)
    return pytest.param(b, id=b.id, marks=marks)


@pytest.fixture(scope="module")
def sessions(tmp_path_factory):
    """One working directory and one shell state per page, shared by its blocks in order."""
    return {"root": tmp_path_factory.mktemp("doc-blocks"), "pages": {}}


def _env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        MPLBACKEND="Agg",
        LAYERGRAFT_CACHE=str(tmp / "lg-cache"),
        PYTHONUNBUFFERED="1",
    )
    return env


@pytest.mark.parametrize("block", [_param(b) for b in RUNNABLE])
def test_block_runs(block: Block, sessions) -> None:
    page = sessions["pages"].setdefault(block.page, {})
    if "dir" not in page:
        name = re.sub(r"\W+", "-", block.page).strip("-")
        page["dir"] = sessions["root"] / name
        page["dir"].mkdir()
    cwd = ROOT if block.marker == "repo" else page["dir"]
    state = page["dir"] / ".shell-state"
    code = substitute(block.code)
    if block.lang == "bash":
        script = page["dir"] / f"block-{block.line}.sh"
        # the page's earlier variables, every assignment exported, and the state saved on exit
        script.write_text(
            "set -eo pipefail\nset -a\n"
            f'[ -f "{state}" ] && . "{state}"\n'
            f'trap \'export -p | grep -v "^declare -[a-zA-Z]*r" > "{state}"\' EXIT\n'
            f"cd {str(cwd)!r}\n" + code
        )
        cmd = ["bash", str(script)]
    else:
        script = page["dir"] / f"block-{block.line}.py"
        script.write_text(code)
        cmd = [sys.executable, str(script)]
    r = subprocess.run(
        cmd, cwd=cwd, env=_env(sessions["root"]), capture_output=True, text=True, timeout=900
    )
    assert r.returncode == 0, (
        f"{block.id} ({block.lang}) exited with {r.returncode}\n--- block as run:\n{code}"
        f"--- stdout (tail):\n{r.stdout[-3000:]}\n--- stderr (tail):\n{r.stderr[-3000:]}"
    )


def test_every_fence_is_named_and_every_skip_says_why() -> None:
    unnamed = [b.id for b in ALL if b.lang not in RUN | SHOWN]
    assert unnamed == [], f"fences must be bash or python (run) or one of {sorted(SHOWN)}"
    silent = [b.id for b in ALL if b.marker == "skip" and not b.reason]
    assert silent == [], "a skipped block must give its reason: <!-- doc-test: skip: REASON -->"
    stray = [b.id for b in ALL if b.marker and b.lang not in RUN]
    assert stray == [], "a doc-test marker stands right before a bash or python block"


def test_few_blocks_are_skipped() -> None:
    skipped = [b for b in RUNNABLE if b.marker == "skip"]
    assert len(skipped) <= len(RUNNABLE) // 3, [b.id for b in skipped]
