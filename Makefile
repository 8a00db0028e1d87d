# The two commands a new user needs: `make demo` and `make test`.
# Both create .venv and install the project into it when pyproject.toml changed.

PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
# Extra pytest arguments, e.g. `make test PYTEST_ARGS="-k preprocess -x"`.
PYTEST_ARGS ?=

.PHONY: demo test install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# One stamp per install flavour; pip reruns only when pyproject.toml is newer.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e ".[test]"
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/glimpse demo

test: $(VENV)/.installed-test
	$(BIN)/pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache glimpse-demo
