# dltrain: `make train` and `make test` set everything up on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.DEFAULT_GOAL := help
.PHONY: help install train test docs lint bench zoo clean

help: ## List the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## Create .venv (if missing) and install dltrain with its dev extras

train: $(STAMP) ## Train the embedded default (configs/digits_mlp.yaml)
	$(BIN)/dltrain train configs/digits_mlp.yaml

test: $(STAMP) ## Run the whole test suite, then build the docs
	$(BIN)/python -m pytest
	$(MAKE) --no-print-directory docs

# --strict fails on a broken link or anchor and on a page missing from the nav (mkdocs.yml).
# NO_MKDOCS_2_WARNING silences mkdocs-material's banner about MkDocs 2.0, printed on every build.
docs: $(STAMP) ## Build the documentation site into site/ (mkdocs, strict)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

lint: $(STAMP) ## Check the code with ruff
	$(BIN)/ruff check .

bench: $(STAMP) ## Run the benchmarks under bench/ (prints figures; not tests)
	@for script in bench/*.py; do echo "== $$script"; $(BIN)/python $$script || exit 1; done

zoo: $(STAMP) ## Rewrite dltrain/models/zoo.json from the installed torchvision and timm
	$(BIN)/python -m dltrain.models.catalog --out dltrain/models/zoo.json

clean: ## Remove the virtual environment and caches (keeps runs/ and data/)
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info site
