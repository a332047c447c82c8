# Thin targets over the runner (python -m stages). The first target that needs it builds .venv.
MODEL ?= vit_t
SWEEP ?=
SWEEP_ARG := $(if $(SWEEP),--sweep $(SWEEP),)
# TARGET="host ssh://pi@raspberrypi.local": where the bench times cells (default: the model's bench.targets)
TARGET ?=
SWEEP_ARG += $(foreach t,$(TARGET),--target '$(t)')
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
RUN := $(PY) -m stages

.PHONY: install all bench parity arm arm-env report segment demo regress baseline compare test test-slow test-e2e lint status docs clean clean-all help

help:
	@echo "make install            build .venv from pyproject.toml (every target that needs it does this first)"
	@echo "make all MODEL=vit_t    build .venv if needed, then run every stage for MODEL (cached stages are skipped)"
	@echo "make test               build .venv if needed, then run the test suite (tiny models; its measured time is in README.md)"
	@echo "make test-slow          the slow tier (tests of minutes each: emulated ARM64, a clone's regress); CI runs it"
	@echo "make test-e2e           the real-model checks, on the vit_t build that make regress (or make all) left"
	@echo "make bench MODEL=... [SWEEP=quick] [TARGET=\"host ssh://user@board\"]   latency sweep (and what it needs) + summary report;"
	@echo "                        TARGET: where it times (an SSH target times its MNN cells on its own CPU; several run in parallel)"
	@echo "make parity MODEL=...   parity of every artifact against PyTorch"
	@echo "make arm MODEL=...      parity of the model's targets: cells (fp16, dynamic int8) on the emulated ARM64 target"
	@echo "make arm-env            build the emulated ARM64 target (qemu-user-static, Debian arm64, MNN aarch64 wheel)"
	@echo "make segment MODEL=vit_t IMAGE=x.jpg POINTS=\"500,375\"   MNN-only segmentation: mask PNG + overlay JPEG"
	@echo "                        [LABELS=1,0] [BOX=x0,y0,x1,y1] [VARIANT=recommended|smallest|fp32|...] [UPSAMPLE=fp32|graph]"
	@echo "make demo MODEL=vit_t [PORT=8765]   click to segment in the browser (MNN only, on 127.0.0.1)"
	@echo "make regress MODEL=... [BASE=ref]   quick-sweep run; accuracy vs reports/baselines/MODEL, latency A/B"
	@echo "                        against BASE (default: merge-base with main) on this machine; exits 1 on a regression"
	@echo "make baseline MODEL=... refresh reports/baselines/MODEL on purpose (then commit it)"
	@echo "make compare A=dir B=dir   two runs, machines or backends side by side"
	@echo "make report MODEL=...   summary.md, recommended.csv and plots from the CSVs of reports/MODEL"
	@echo "make lint               ruff and the import-layer contracts (lint-imports)"
	@echo "make status MODEL=...   which stages are up to date"
	@echo "make docs               render README.md's and docs/'s generated blocks from the committed CSVs"
	@echo "make clean MODEL=...    remove build/MODEL and reports/MODEL"
	@echo "make clean-all          remove build/, .venv and reports/ but the committed reports/{baselines,measured,demo}"
	@echo "make help               this list"

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

all: install
	$(RUN) run --model $(MODEL) $(SWEEP_ARG)

parity: install
	$(RUN) run --model $(MODEL) parity

# MNN's aarch64 kernels under QEMU: accuracy as a phone computes it (about 20 minutes for vit_t; not in `make all`)
arm: install
	$(RUN) arm-env
	$(RUN) run --model $(MODEL) target_parity report

arm-env: install
	$(RUN) arm-env

bench: install
	$(RUN) run --model $(MODEL) $(SWEEP_ARG) bench report

regress: install
	$(RUN) regress --model $(MODEL) $(SWEEP_ARG) $(if $(BASE),--base $(BASE),)

baseline: install
	$(RUN) baseline --model $(MODEL) $(SWEEP_ARG)

# make compare A=reports/baselines/vit_t B=reports/vit_t   (or A=reports/vit_t::runtime=mnn B=reports/vit_t::runtime=onnxruntime)
compare: install
	$(RUN) compare "$(A)" "$(B)"

# make segment MODEL=vit_t IMAGE=photo.jpg POINTS="500,375" [LABELS=1] [BOX=x0,y0,x1,y1] [VARIANT=fp32] [UPSAMPLE=graph]
segment: install
	$(RUN) segment --model $(MODEL) --image "$(IMAGE)" $(if $(POINTS),--points "$(POINTS)",) \
		$(if $(LABELS),--labels "$(LABELS)",) $(if $(BOX),--box "$(BOX)",) $(if $(VARIANT),--variant $(VARIANT),) \
		$(if $(UPSAMPLE),--upsample $(UPSAMPLE),)

# click to segment in a browser, on the MNN models of build/MODEL (needs `make all`, or at least the convert stage)
demo: install
	$(RUN) demo --model $(MODEL) $(if $(PORT),--port $(PORT),)

report: install
	$(RUN) run --model $(MODEL) $(SWEEP_ARG) report

lint: install
	$(PY) -m ruff check stages tests
	$(VENV)/bin/lint-imports

status: install
	$(RUN) status --model $(MODEL)

# the figures of README.md and docs/ from the committed CSVs (tests/test_docs.py fails when a block differs)
docs: install
	$(PY) -m stages.tools.docs

# two workers (the machine's cores); the session-built tiny pipelines are built once and shared (tests/conftest.py)
test: install
	$(PY) -m pytest -q -n 2 --dist worksteal -m "not e2e and not slow"

# the slow tier: tests of minutes each (emulated ARM64, a throwaway clone's regress, ...); CI runs it too
test-slow: install
	$(PY) -m pytest -q -n 2 --dist worksteal -m "slow and not e2e"

# the real vit_t checks, on the build `make regress MODEL=vit_t` leaves (CI runs the real pipeline once)
test-e2e: install
	$(PY) -m pytest -q -m e2e

# MODEL must be a model's name (build/NAME, reports/NAME): never empty, a path, or a committed reports folder
KEPT_REPORTS := baselines measured demo
clean:
	@m='$(subst ','"'"',$(MODEL))'; case "$$m" in \
	  ""|.*|-*|*/*|*[!A-Za-z0-9._-]*|baselines|measured|demo) \
	    echo "make clean: MODEL='$$m' is not a model name: expected one like vit_t (letters, digits, . _ -;" \
	         "not empty, not a path, not one of the committed reports folders $(KEPT_REPORTS))" >&2; exit 2;; \
	esac; rm -rf -- "build/$$m" "reports/$$m"

# everything made here (builds, reports, the venv) but the committed reports/{$(KEPT_REPORTS)}
clean-all:
	rm -rf build $(VENV)
	find reports -mindepth 1 -maxdepth 1 $(foreach k,$(KEPT_REPORTS),-not -name $(k)) -exec rm -rf -- {} +
