# The two commands of the README's Quick start: `make demo` and `make test`.
# Both create .venv when it is missing and install the project into it.
VENV ?= .venv
BIN := $(VENV)/bin
PYTHON ?= python3
# The real CIFAR-100 sits beside the checkout in this workplace; elsewhere use ./data.
GRADLAB_DATA_DIR ?= $(if $(wildcard ../shared/data/cifar100/train.npz),$(abspath ../shared/data/cifar100),$(abspath data))
export GRADLAB_DATA_DIR

.PHONY: setup demo test lint services bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

demo: setup
	$(BIN)/gradlab train --depth 8 --epochs 3 --train-limit 5000 --val-limit 1000 --test-limit 2000 --out runs/demo

services:
	bash scripts/ensure_services.sh

test: setup services
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/gradlab bench

clean:
	rm -rf runs .pytest_cache .ruff_cache
