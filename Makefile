# The two commands: `make demo` (the whole pipeline on the embedded data set) and `make test`.
# Both create .venv if missing and install the project with the pinned versions.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.hdmnet-installed

.PHONY: install demo test lint clean-results

$(STAMP): pyproject.toml requirements/constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c requirements/constraints.txt -e '.[dev]'
	@touch $@

# Also the offline page template of `dvc plots show` (.dvc/config names it; git-ignored, so
# written here rather than committed): vega inlined, no CDN. Quick and idempotent.
install: $(STAMP)
	@$(BIN)/python -m hdmnet.dvc_params --plots-template

demo: install
	$(BIN)/hdmnet demo

test: install
	@bash scripts/ensure_test_tools.sh
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check src tests benchmarks
