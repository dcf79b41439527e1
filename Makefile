# The two commands of the README. Both install what they need first.
PYTHON ?= python3
PIP_INSTALL = $(PYTHON) -m pip install -q -c constraints.txt -e ".[dev]"
FMNIST = /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz

.PHONY: install data figures test bench

install:
	$(PIP_INSTALL)

data:                       ## Fashion-MNIST from Debian's package dataset-fashion-mnist
	@[ -e $(FMNIST) ] || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	  apt-get install -y -qq dataset-fashion-mnist) || echo "warning: install dataset-fashion-mnist"

figures: install data       ## regenerate every figure (quick preset, CPU)
	$(PYTHON) -m ldfa.cli figures --preset quick --out figures/out

test: install data          ## lint, then the test suite
	$(PYTHON) -m ruff check .
	$(PYTHON) -m pytest -q

bench: install data         ## speed benchmarks (ratios measured in one run)
	$(PYTHON) bench/bench_theory.py
	$(PYTHON) bench/bench_step.py
