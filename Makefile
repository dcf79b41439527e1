# The two commands of the README. Both install what they need first.
PYTHON ?= python3
PIP_INSTALL = $(PYTHON) -m pip install -q -c constraints.txt -e ".[dev]"
FMNIST = /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz

.PHONY: install data figures test bench paper

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
	$(PYTHON) -m ldfa.cli bench

paper: figures              ## the manuscript: generated inputs, then latexmk (Debian's texlive)
	@command -v latexmk >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	  apt-get install -y -qq --no-install-recommends texlive-latex-base texlive-latex-recommended \
	  texlive-latex-extra latexmk)
	$(PYTHON) -m ldfa.cli paper --preset quick --out paper/generated
	cd paper && latexmk -pdf -interaction=nonstopmode -halt-on-error main.tex
