# Two commands do everything on a fresh machine:
#   make demo   install into .venv and run the quickstart experiment (pneumo run experiments/quickstart.yaml)
#   make test   install with the dev extras and run the whole test suite (what .ci/run calls)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/pneumo run experiments/quickstart.yaml

test: install
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python -m bench all

clean:
	rm -rf results mlflow.db mlartifacts data/synthetic-chest-xray
