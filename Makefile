# Two commands on a fresh machine: `make demo` and `make test`. Each creates .venv by itself.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-dev
BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: venv test demo bench clean

$(STAMP): pyproject.toml requirements/constraints-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c requirements/constraints-dev.txt -e ".[dev]"
	touch $(STAMP)

$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -c requirements/constraints-dev.txt -e ".[bench]"
	touch $(BENCH_STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	$(PY) examples/demo.py --out build/demo

bench: $(BENCH_STAMP)
	$(PY) benchmarks/bench_core.py
	$(PY) benchmarks/bench_loader.py
	$(PY) benchmarks/bench_tf.py
	$(PY) benchmarks/bench_suite.py

clean:
	rm -rf $(VENV) build .pytest_cache .hypothesis
