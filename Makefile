# Set-up is idempotent: a stamp file records that .venv matches pyproject.toml.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
FMNIST_DIR := /usr/share/datasets/fashion-mnist
FORTUNES_DIR := /usr/share/games/fortunes
WORDS_FILE := /usr/share/dict/american-english

.PHONY: setup demo test bench bench-serve bench-beyond bench-tramer bench-synthetic bench-adaptive bench-ownership bench-state docs-bench lint data clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Debian's offline data: Fashion-MNIST, the fortune quotations and the word list (text sets;
# Thieves' RANDOM queries draw wordfreq's words by default, the word list on request).
data:
	@missing=""; \
	[ -d $(FMNIST_DIR) ] || missing="$$missing dataset-fashion-mnist"; \
	[ -f $(FORTUNES_DIR)/science ] || missing="$$missing fortunes fortunes-min"; \
	[ -f $(WORDS_FILE) ] || missing="$$missing wamerican"; \
	if [ -z "$$missing" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		updated=""; for package in $$missing; do \
			apt-get install -y -qq $$package >/dev/null 2>&1 || \
			{ [ -z "$$updated" ] && updated=1 && apt-get update -qq >/dev/null 2>&1 && \
			  apt-get install -y -qq $$package >/dev/null 2>&1; } || \
			echo "data: apt-get install $$package failed (without fashion-mnist, quickstart uses mnist5k; without fortunes, no text set; without wamerican, no --vocabulary wamerican)"; \
		done; \
	else echo "data: not root or no apt-get; skipping (sudo apt-get install$$missing)"; fi

setup: $(STAMP) data

demo: setup
	$(BIN)/modelheist quickstart

# pytest exits 5 when it collects no test: that must fail, and it does (non-zero).
test: setup
	$(BIN)/python -m pytest -q -m "not slow" --durations=15

# Every benchmark appends rows to benchmarks/results/*.jsonl (runs already stored are skipped)
# and ends by regenerating docs/benchmarks.md's tables from them.
RUN_SCENARIOS := $(BIN)/python benchmarks/run_scenarios.py

bench: setup data
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	$(RUN_SCENARIOS) examples/knockoff-tuning.toml examples/knockoff-fashion-mnist.toml \
		examples/knockoff-fashion-mnist-art.toml
	$(BIN)/python benchmarks/docs_tables.py

bench-tramer: setup
	$(BIN)/python benchmarks/tramer.py
	$(BIN)/python benchmarks/docs_tables.py

bench-synthetic: setup
	$(RUN_SCENARIOS) examples/synthetic-tuning.toml examples/synthetic-t-rnd.toml \
		examples/synthetic-jbda.toml examples/synthetic-n-ifgsm.toml
	$(BIN)/python benchmarks/docs_tables.py

bench-adaptive: setup data
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	$(RUN_SCENARIOS) examples/adaptive-knockoff.toml examples/adaptive-knockoff-art.toml
	$(BIN)/python benchmarks/docs_tables.py

# issue 11: the backdoor watermark and removal, false accusations and claims, DAWN (hours on 2 cores)
bench-ownership: setup data
	$(BIN)/python benchmarks/watermark.py --seeds 3
	$(BIN)/python benchmarks/false_claims.py --seeds 3
	$(BIN)/python benchmarks/dawn.py --seeds 3
	$(BIN)/python benchmarks/docs_tables.py

bench-serve: setup
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	$(BIN)/python benchmarks/serve_load.py
	$(BIN)/python benchmarks/serve_load.py --pipelines text
	$(BIN)/python benchmarks/docs_tables.py

# issue 14: Thieves on the text APIs, image-translation extraction (hours on 2 cores)
bench-beyond: setup data
	$(RUN_SCENARIOS) examples/thieves-tuning.toml examples/thieves-fortunes.toml \
		examples/thieves-vader.toml
	$(BIN)/python benchmarks/translation.py --validate
	$(BIN)/python benchmarks/translation.py --seeds 3
	$(BIN)/python benchmarks/docs_tables.py

bench-state: setup
	for seed in 0 1 2; do $(BIN)/python benchmarks/state_scaling.py --seed $$seed || exit 1; done
	$(BIN)/python benchmarks/docs_tables.py

# docs/benchmarks.md's generated tables, rewritten from benchmarks/results/*.jsonl
docs-bench: setup
	$(BIN)/python benchmarks/docs_tables.py

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
