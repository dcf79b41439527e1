# The two commands of the README. Both install what they need first.
PYTHON ?= python3
PIP_INSTALL = $(PYTHON) -m pip install -q -c constraints.txt -e ".[dev]"

.PHONY: install figures test lint bench

install:
	$(PIP_INSTALL)

figures: install            ## regenerate every figure (quick preset, CPU)
	$(PYTHON) -m ldfa.cli figures --preset quick --out figures/out

test: install               ## lint, then the test suite
	$(PYTHON) -m ruff check .
	$(PYTHON) -m pytest -q

bench: install
	$(PYTHON) bench/bench_theory.py
