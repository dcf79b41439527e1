# The two commands of the README are `make figures` and `make test`; each sets up what it needs.
#
# Set-up: a project virtual environment in .venv, created with --system-site-packages so that
# packages already installed for this Python (torch above all, CPU or CUDA build) are seen and
# kept; ldfa is installed editable into .venv, never into the system's site-packages, and two
# clones never share an install. pyproject.toml accepts a range of torch versions, so pip keeps
# the torch it finds. To use an environment you already have: make figures VENV=$VIRTUAL_ENV
# (or VENV=$CONDA_PREFIX). CI pins torch by passing PIP_FLAGS="-c constraints.txt" (.ci/run).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP_FLAGS ?=
FMNIST = /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz

.PHONY: install data figures test bench paper docs
.DELETE_ON_ERROR:

$(PY):                      ## Debian's python3 needs python3-venv for this; installed when missing
	$(PYTHON) -m venv --system-site-packages $(VENV) || { command -v apt-get >/dev/null && \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv && \
	  $(PYTHON) -m venv --system-site-packages $(VENV); } || \
	  { echo "make: cannot create $(VENV); install python3-venv" >&2; exit 1; }

$(VENV)/.ldfa-dev: pyproject.toml | $(PY)
	$(PY) -m pip install -q $(PIP_FLAGS) -e ".[dev]"
	@touch $@

$(VENV)/.ldfa-docs: pyproject.toml | $(PY)
	$(PY) -m pip install -q $(PIP_FLAGS) -e ".[docs]"
	@touch $@

install: $(VENV)/.ldfa-dev  ## .venv with ldfa (editable) and the test tools

data:                       ## Fashion-MNIST from Debian's package dataset-fashion-mnist
	@[ -e $(FMNIST) ] || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	  apt-get install -y -qq dataset-fashion-mnist) || echo "warning: install dataset-fashion-mnist"

figures: install data       ## regenerate every figure (quick preset, CPU)
	$(PY) -m ldfa.cli figures --preset quick --out figures/out

test: install data          ## lint, then the test suite
	$(PY) -m ruff check .
	$(PY) -m pytest -q

bench: install data         ## speed benchmarks (ratios measured in one run)
	$(PY) -m ldfa.cli bench

docs: $(VENV)/.ldfa-docs    ## the documentation site with the API reference, into site/
	$(PY) -m mkdocs build --strict --site-dir site

paper: figures              ## the manuscript: generated inputs, then latexmk (Debian's texlive)
	@command -v latexmk >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	  apt-get install -y -qq --no-install-recommends texlive-latex-base texlive-latex-recommended \
	  texlive-latex-extra latexmk)
	$(PY) -m ldfa.cli paper --preset quick --out paper/generated
	cd paper && latexmk -pdf -interaction=nonstopmode -halt-on-error main.tex
