"""The house rules of ``src/layergraft``, checked from the code itself (``ast``, nothing run).

* The module import graph has no cycle — every import counts, also one inside a function.
* Packages are layered: a module imports only its own package or lower layers (the table
  below, the same as README's development section), so a capability never reaches up into
  the command line, the demo, or a sibling capability.
* A function-local import of a layergraft module is allowed only where it keeps start-up fast:
  in the command-line modules (a command loads its own code when it runs, so ``layergraft
  restore`` does not import the sweep, generation and pruning code), and in the places listed
  here with their reason. None exists to hide a cycle: the graph counts them too.
* No module over 400 lines; one ``load_model``; plots and reports rendered in ``report/`` only.
* ``import layergraft.api`` (and the CLI) imports no torch, transformers or matplotlib.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "layergraft"
README = Path(__file__).resolve().parents[1] / "README.md"

#: layers, lowest first; a module may import its own group and any lower layer
LAYERS: list[set[str]] = [
    {"errors", "ranges", "jsonl", "recipe", "text", "version", "cluster"},  # shared vocabulary
    {"arch"},
    {"checkpoint"},
    {"models", "report"},
    {"evaluate"},
    {"gen"},  # below slr/prune: a sweep validates candidates, and prune checks chat, by generating
    {"slr", "prune"},
    {"toy"},
    {"study"},  # the main job: steps over slr/, gen/ and report/
    {"demo"},
    {"api"},
    {"cli"},
    {"__init__", "__main__"},
]
#: groups inside the vocabulary layer may import each other (the graph has no cycle anyway)
SAME_LAYER_OK = LAYERS[0]

#: function-local imports of layergraft modules, each with why it is not at the top
LAZY_ALLOWED = {
    ("layergraft", "layergraft.models.load"): "`import layergraft` must not import torch",
    (
        "layergraft.models.ghost",
        "layergraft.models.ghost_remote.modeling_layergraft_ghost",
    ): "the shipped remote-code file imports torch at module level",
}


def module_name(path: Path) -> str:
    parts = ["layergraft", *path.relative_to(SRC).with_suffix("").parts]
    return ".".join(parts[:-1]) if parts[-1] == "__init__" else ".".join(parts)


def modules() -> dict[str, Path]:
    return {
        module_name(p): p
        for p in SRC.rglob("*.py")
        if "data" not in p.relative_to(SRC).parts and "__pycache__" not in p.parts
    }


def group(mod: str) -> str:
    """The layer group of a module: its first package below ``layergraft`` (or the top module)."""
    parts = mod.split(".")
    if len(parts) == 1:
        return "__init__"
    return parts[1]


def imports(mods: dict[str, Path]) -> list[tuple[str, str, bool]]:
    """``(importer, imported module, at top level?)`` for every internal import."""
    out = []
    for mod, path in mods.items():
        tree = ast.parse(path.read_text())
        top = {id(n) for n in tree.body}
        top |= {id(n) for t in tree.body if isinstance(t, ast.If) for n in t.body}
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    pkg = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    pkg = pkg[: len(pkg) - (node.level - 1)]
                    base = ".".join(pkg + ([base] if base else []))
                for a in node.names:
                    sub = f"{base}.{a.name}"
                    targets.append(sub if sub in mods else base)
            for t in targets:
                if t == "layergraft" or t.startswith("layergraft."):
                    while t not in mods and "." in t:
                        t = t.rsplit(".", 1)[0]
                    if t != mod:
                        out.append((mod, t, id(node) in top))
    return out


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in list(edges):
        if v not in index:
            visit(v)
    return found


MODS = modules()
EDGES = imports(MODS)


def test_every_group_has_a_layer():
    known = set().union(*LAYERS)
    assert {group(m) for m in MODS} <= known, sorted({group(m) for m in MODS} - known)


def test_the_import_graph_has_no_cycle():
    graph: dict[str, set[str]] = {}
    for a, b, _ in EDGES:
        graph.setdefault(a, set()).add(b)
    assert cycles(graph) == []


def test_lower_layers_never_import_higher_ones():
    rank = {g: i for i, layer in enumerate(LAYERS) for g in layer}
    bad = []
    for a, b, _ in EDGES:
        ga, gb = group(a), group(b)
        if ga == gb or (ga in SAME_LAYER_OK and gb in SAME_LAYER_OK):
            continue
        if rank[gb] >= rank[ga]:
            bad.append(f"{a} -> {b}")
    assert bad == []


def test_function_local_imports_are_only_for_start_up():
    local = {(a, b) for a, b, top in EDGES if not top and group(a) != "cli"}
    assert local == set(LAZY_ALLOWED), sorted(local ^ set(LAZY_ALLOWED))


def test_no_module_over_400_lines():
    long = {m: n for m, p in MODS.items() if (n := len(p.read_text().splitlines())) > 400}
    assert long == {}


def test_one_load_model():
    defs = [m for m, p in MODS.items() if "\ndef load_model(" in p.read_text()]
    assert defs == ["layergraft.models.load"]


def test_plots_and_reports_are_rendered_in_report_only():
    outside = [
        m
        for m, p in MODS.items()
        if group(m) != "report"
        and ("import matplotlib" in p.read_text() or ".savefig(" in p.read_text())
    ]
    assert outside == []


@pytest.mark.parametrize("entry", ["layergraft.api", "layergraft.cli"])
def test_importing_the_api_loads_no_heavy_library(entry):
    code = (
        f"import sys, {entry}; "
        "print(sorted(m for m in ('torch', 'transformers', 'matplotlib', 'numpy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_readme_names_every_package():
    text = README.read_text()
    start = text.index("<!-- layout -->")
    table = text[start : text.index("<!-- /layout -->")]
    packages = sorted(p.parent.name for p in SRC.glob("*/__init__.py") if p.parent.name != "data")
    missing = [p for p in packages if f"`{p}/`" not in table]
    assert missing == []
