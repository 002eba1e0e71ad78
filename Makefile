# The two commands of the README's Quick start: `make demo` and `make test`.
# Both create .venv when it is missing and install the project into it.
VENV ?= .venv
BIN := $(VENV)/bin
PYTHON ?= python3
# The real CIFAR-100 sits beside the checkout in this workplace; elsewhere use ./data.
GRADLAB_DATA_DIR ?= $(if $(wildcard ../shared/data/cifar100/train.npz),$(abspath ../shared/data/cifar100),$(abspath data))
export GRADLAB_DATA_DIR

.PHONY: setup demo test pytest typecheck test-deploy lint services bench clean dashboard images compose-up compose-down

# The link tree under build/ is part of the install: if it went (`make clean`, a git clean), the
# venv reinstalls.
setup:
	@ls -d build/__editable__.gradlab-* >/dev/null 2>&1 || rm -f $(VENV)/.installed
	@$(MAKE) --no-print-directory $(VENV)/.installed

# The parts installed as gradlab.<part>. The install is setuptools' strict editable mode: a tree
# of links under build/ that static tools (mypy, editors) resolve like any package, unlike the
# default mode's import hook. A file added to or removed from a part changes its folder, which
# reinstalls (the links are per file).
PARTS := api cli client core dispatch migrations observability science services settings store worker
PART_FOLDERS := $(wildcard $(addsuffix /,$(PARTS)) $(addsuffix /*/,$(PARTS)))

$(VENV)/.installed: pyproject.toml $(PART_FOLDERS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]' --config-settings editable_mode=strict
	touch $@

# The main job: the whole seed study at smoke scale on the embedded default (SQLite, local
# worker, no servers). Re-running it resumes; the report lands in runs/seed-study/.
demo: setup
	$(BIN)/gradlab study run examples/seed-study.yaml --scale smoke --out runs/seed-study

services:
	bash scripts/ensure_services.sh

# Everything but the container tests (building the CUDA worker image from Debian takes over
# ten minutes cold, which would double the suite): those run with `make test-deploy`.
# pytest runs on every core (pytest-xdist, at most 4 workers), a test file per worker at a
# time so that a file's servers and module fixtures start once; each worker has its own
# databases, ports and queues (tests/support/), and computes on one thread, as do the
# processes its tests start (tests/conftest.py). TEST_WORKERS=0 runs it in one process.
# The type check runs beside pytest (-j2): the suite leaves a third of the cores idle while its
# tests wait on services, which the type check fills (a cold check is half a minute of one core).
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); echo $$(( n < 4 ? n : 4 )))
test: setup services
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	@$(MAKE) --no-print-directory -j2 typecheck pytest

pytest: setup services
	$(BIN)/python -m pytest -m "not docker" -n $(TEST_WORKERS) --dist loadfile

# mypy --strict (settings in pyproject.toml) over every part, as installed packages.
TYPECHECKED := $(PARTS)
typecheck: setup
	$(BIN)/mypy $(addprefix -p gradlab.,$(TYPECHECKED))

# The deployment's tests alone (tests/deploy): Helm chart, compose file, Dockerfiles, and the
# images built and run with Docker (minutes on a first build, reused afterwards).
test-deploy: setup services
	$(BIN)/python -m pytest tests/deploy

# docker-compose.yml on this machine (no image registry): images built here, the stack up
# with the API on localhost:8000 (port in .env, written on first use with the data folder
# above). docs/deploy.md.
images:
	python3 scripts/build_images.py --prune

compose-up:
	bash scripts/compose.sh up

compose-down:
	bash scripts/compose.sh down

bench: setup services
	$(BIN)/gradlab bench
	$(BIN)/python bench/epoch_write.py
	$(BIN)/python bench/api_load.py

# The dashboard's script and style, built from web/ (npm registry, build time only) into
# api/dashboard/static/, where they are committed: serving and testing need no Node.
dashboard:
	cd web && npm ci --no-audit --no-fund && npm run build

clean:
	rm -rf runs .pytest_cache .ruff_cache
