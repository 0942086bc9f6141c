# One entry point for setting up, running and testing. `make demo` and `make test` work on a
# fresh machine with Python >= 3.11 (they create .venv first).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CORES ?= all
SUMMARY := results/summary.html

.PHONY: setup demo summary test test-fast lint format bench device-prepare rehearse-gpu clean-results

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	touch $@

setup: $(BIN)/.installed

demo: setup  ## the main job: the demo workflow on embedded synthetic data -> results/
	$(BIN)/snakemake --profile profiles/local --cores $(CORES) --configfile config/demo.yaml
	@printf "\nThe summary page: %s\n\n" "$(CURDIR)/$(SUMMARY)"
	@sed -n '/^| Dataset | Chain /,/^Bold: /p' results/table1.md

summary: setup  ## only the summary page (and what it needs) -> results/summary.html
	$(BIN)/snakemake --profile profiles/local --cores $(CORES) $(SUMMARY) --configfile config/demo.yaml
	@printf "\nThe summary page: %s\n" "$(CURDIR)/$(SUMMARY)"

test: setup  ## the whole test suite (what CI runs)
	$(BIN)/python -m pytest -q -rs

test-fast: setup  ## everything but the slow end-to-end tests
	$(BIN)/python -m pytest -q -rs -m "not slow and not slurm"

lint: setup
	$(BIN)/snakemake --lint --configfile config/demo.yaml
	$(BIN)/snakefmt --check Snakefile rules/

format: setup
	$(BIN)/snakefmt Snakefile rules/

bench: setup  ## speed benchmark -> results/benchmarks/step.json
	$(BIN)/python -m dgkd_core bench

device-prepare: setup  ## before a GPU window: the wheels and data a lent GPU machine lacks -> .device/
	bash ci/device_prepare.sh

rehearse-gpu: setup  ## ci/gpu_run.sh on this CPU in the GPU machine's conditions (a fresh venv linked to .venv's image packages, 60 s)
	bash ci/rehearse_gpu.sh

clean-results:
	rm -rf results/ .snakemake/
