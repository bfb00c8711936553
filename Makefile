# pacsmesh — the two commands: `make demo` and `make test`. Each installs what it needs first.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMPS := .stamps
SHARED ?= ../shared
# pytest-xdist workers for `make test` (CI has 2 cores). Each worker takes a whole test file at a
# time (--dist loadfile): a file's module fixtures (a consortium, an Orthanc) are built once and
# its tests keep their order.
TEST_WORKERS ?= 2

.PHONY: demo test lint fmt install system-deps npm-deps clean

install: $(STAMPS)/venv $(STAMPS)/npm

# The venv is rebuilt only when pyproject.toml changes (the stamp records its hash).
$(STAMPS)/venv: pyproject.toml
	@mkdir -p $(STAMPS)
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@$(BIN)/pip install -q --upgrade pip >/dev/null
	@# torch first, from the local CPU wheel: a range resolved later would pull CUDA builds.
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "torch==2.13.0"
	@$(BIN)/pip install -q -e '.[dev]'
	@touch $@

$(STAMPS)/npm: package.json
	@mkdir -p $(STAMPS)
	@if [ -f package-lock.json ]; then npm ci --silent --no-audit --no-fund; else npm install --silent --no-audit --no-fund; fi
	@touch $@

system-deps:
	@bash .ci/system-deps

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

fmt: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: system-deps install lint
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

demo: install
	$(BIN)/pacsmesh demo --shared $(SHARED)

clean:
	rm -rf $(VENV) $(STAMPS) node_modules
