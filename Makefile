# The two commands a new user needs: `make demo` and `make test` (and `make docs`).
# Each creates .venv and installs the project into it when pyproject.toml changed.

PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
# Extra pytest arguments, e.g. `make test PYTEST_ARGS="-k preprocess -x"`.
PYTEST_ARGS ?=

# Extra sphinx-build arguments, e.g. `make docs SPHINXOPTS="-j 2"`.
SPHINXOPTS ?=

.PHONY: demo test docs install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# One stamp per install flavour; pip reruns only when pyproject.toml is newer.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e ".[test]"
	touch $@ $(VENV)/.installed

$(VENV)/.installed-docs: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e ".[docs]"
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/glimpse demo

test: $(VENV)/.installed-test
	$(BIN)/pytest $(PYTEST_ARGS)

# Warnings are errors; the gallery's examples run on a small simulated session.
docs: $(VENV)/.installed-docs
	$(BIN)/sphinx-build -W --keep-going -b html $(SPHINXOPTS) docs docs/_build/html

clean:
	rm -rf $(VENV) .pytest_cache glimpse-demo docs/_build docs/auto_examples docs/api/generated
