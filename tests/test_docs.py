"""Documentation generated from the code must match it, and the site must build and render.

- docs/cli.md is the CLI's own --help (tools/gen_cli_reference.py);
- the results tables of the README and the site's pages are rendered from the committed results
  files (tools/render_results.py);
- the site (mkdocs.yml, pages in docs/) builds with ``mkdocs build --strict``: a broken link, a
  missing page or an API function mkdocstrings cannot find fails it;
- the built home page and a results page open in headless Chromium with every image loaded
  (skipped where Debian's chromium is not installed; .ci/run installs it).
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_cli_reference_is_current():
    r = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "gen_cli_reference.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr


def test_published_numbers_are_the_results_files():
    r = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "render_results.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr + r.stdout


def test_readme_starts_with_the_two_commands():
    lines = [ln.strip() for ln in (ROOT / "README.md").read_text().splitlines()[:12]]
    assert any(ln.startswith("make demo") for ln in lines)
    assert any(ln.startswith("make test") for ln in lines)
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci


def test_readme_is_a_landing_page():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    pytest.importorskip("mkdocs", reason="the docs extra is not installed")
    out = tmp_path_factory.mktemp("site")
    r = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-5000:]
    return out


def test_site_builds_strict_with_every_page(site):
    for page in (
        "index.html",
        "getting-started.html",
        "guides/slr.html",
        "guides/pruning.html",
        "guides/gpu.html",
        "guides/ray.html",
        "cli.html",
        "reference/api.html",
        "reference/results.html",
        "reference/errors.html",
        "results.html",
        "demo/index.html",
        "gemma3/index.html",
        "gemma3-natural/index.html",
        "prune/index.html",
        "bench/index.html",
        "design.html",
        "development.html",
    ):
        assert (site / page).is_file(), page
    api = (site / "reference" / "api.html").read_text()
    for name in ("slr", "sweep", "restore", "prune", "swapped_layers", "load_model"):
        assert f'id="layergraft.api.{name}"' in api, name
    # the results tables are rendered into the pages, and the README's code is shared, not copied
    assert "2:7:mlp" in (site / "demo" / "index.html").read_text()
    assert "Qwen/Qwen2.5-0.5B-Instruct" in (site / "index.html").read_text()


_PROBE = """
<script>
window.__errors = [];
window.addEventListener('error', e => window.__errors.push(String(e.message || e.target.src)), true);
window.addEventListener('load', () => {
  const imgs = Array.from(document.images).map(i => [i.getAttribute('src'), i.naturalWidth]);
  document.title = 'PROBE' + JSON.stringify({imgs, errors: window.__errors});
});
</script>
"""


@pytest.fixture(scope="module")
def served(site):
    """The built site on a local HTTP server (127.0.0.1, a free port), as a reader would get it."""

    class Quiet(http.server.SimpleHTTPRequestHandler):  # no request log on stderr
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(site))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join()


@pytest.mark.skipif(
    shutil.which("chromium") is None, reason="Debian chromium not installed (.ci/run installs it)"
)
@pytest.mark.parametrize(
    ("page", "min_images"), [("index.html", 1), ("gemma3/index.html", 3), ("demo/index.html", 3)]
)
def test_pages_render_with_their_images_in_headless_chromium(
    site, served, tmp_path, page, min_images
):
    src = site / page
    probe = src.with_name("probe-" + src.name)  # beside the page: the same relative links
    probe.write_text(src.read_text().replace("<head>", "<head>" + _PROBE, 1))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000"]  # fmt: skip
    dom = subprocess.run(
        ["chromium", *flags, "--dump-dom", f"{served}/{probe.relative_to(site).as_posix()}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "<title>PROBE" in dom.stdout, dom.stderr[-2000:]
    title = dom.stdout.split("<title>PROBE", 1)[1].split("</title>", 1)[0]
    state = json.loads(title.replace("&quot;", '"').replace("&amp;", "&"))
    assert state["errors"] == [], state
    assert len(state["imgs"]) >= min_images, state
    assert all(w > 0 for _, w in state["imgs"]), state
