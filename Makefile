# Thin targets over the runner (python -m stages). The first target that needs it builds .venv.
MODEL ?= vit_t
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
RUN := $(PY) -m stages

.PHONY: install all test lint status clean clean-all help

help:
	@echo "make all MODEL=vit_t    build .venv if needed, then run every stage for MODEL (cached stages are skipped)"
	@echo "make test               build .venv if needed, then run the test suite"
	@echo "make status MODEL=...   which stages are up to date"
	@echo "make clean MODEL=...    remove build/MODEL and reports/MODEL"

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

all: install
	$(RUN) run --model $(MODEL)

lint: install
	$(PY) -m ruff check stages tests

status: install
	$(RUN) status --model $(MODEL)

test: install
	$(PY) -m pytest -q

clean:
	rm -rf build/$(MODEL) reports/$(MODEL)

clean-all:
	rm -rf build reports/*/ $(VENV)
