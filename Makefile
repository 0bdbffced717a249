# Two commands on a fresh machine: `make demo` and `make test`. Each creates .venv by itself.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-dev
BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: venv test demo bench bench-core bench-loader bench-tf bench-suite bench-storage clean

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

# `make bench` runs every benchmark (python -m benchmarks all); `make bench-core` etc. one of them.
# Options go through BENCH_ARGS, e.g. `make bench-suite BENCH_ARGS="--quick --out /tmp/q"`.
bench: $(BENCH_STAMP)
	$(PY) -m benchmarks all $(BENCH_ARGS)

bench-core bench-loader bench-tf bench-suite bench-storage: bench-%: $(BENCH_STAMP)
	$(PY) -m benchmarks $* $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build .pytest_cache .hypothesis
