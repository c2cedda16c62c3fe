# desmigratif — the two set-up commands are `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= config.demo.toml
LANGS := id en jv

.PHONY: demo test test-sqlite test-postgres lint typecheck bench serve \
        extract update-catalogs compile content-check clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## make demo: install, create the demo database and serve on http://127.0.0.1:8080
demo: $(STAMP)
	$(BIN)/desmigratif demo --config $(CONFIG)
	$(BIN)/desmigratif serve --config $(CONFIG)

## make test: install with dev extras, lint, check the content, run the whole suite
## (SQLite and PostgreSQL; PostgreSQL tests skip with the reason when no server answers)
test: $(STAMP) lint content-check
	$(BIN)/pytest -q -p no:cacheprovider

lint: $(STAMP)
	$(BIN)/ruff check bot handlers storage tests bench
	$(BIN)/mypy

content-check: $(STAMP)
	$(BIN)/python -m bot.content_check

## make bench: run every benchmark (bench/run_all.py) and write bench/results.json
bench: $(STAMP)
	$(BIN)/python bench/run_all.py

## Catalogs: extract msgids from the code, merge them into each language, compile .mo files.
extract: $(STAMP)
	$(BIN)/pybabel extract -F babel.cfg -k N_ -k t -o locales/messages.pot --no-location \
	    --sort-output --project desmigratif --copyright-holder "desmigratif developers" .

update-catalogs: extract
	for lang in $(LANGS); do \
	    if [ -f locales/$$lang/LC_MESSAGES/messages.po ]; then \
	        $(BIN)/pybabel update -i locales/messages.pot -d locales -l $$lang --no-fuzzy-matching --omit-header; \
	    else \
	        $(BIN)/pybabel init -i locales/messages.pot -d locales -l $$lang; \
	    fi; \
	done

compile: $(STAMP)
	$(BIN)/pybabel compile -d locales --statistics

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
