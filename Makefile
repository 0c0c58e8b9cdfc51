# `make run` and `make test` each set up .venv on their own (first time: a few minutes).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint reports perf clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/alma-bench run quickstart

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .

# Published reports: run each suite that can run on this machine, then regenerate reports/.
# Finished runs in results/ are reused (run directories are keyed by config hash).
REPORT = $(BIN)/alma-bench report
reports: $(STAMP)
	$(BIN)/alma-bench run quickstart --quiet
	$(REPORT) results/quickstart --out reports/quickstart \
	  --command "make reports: alma-bench run quickstart && alma-bench report results/quickstart"
	$(BIN)/alma-bench run app-cifar10 --scale quick --seeds 0,1,2 --quiet
	$(REPORT) results/app-cifar10-quick --out reports/app-cifar10 \
	  --command "make reports: alma-bench run app-cifar10 --scale quick --seeds 0,1,2 && alma-bench report results/app-cifar10-quick"
	$(BIN)/alma-bench run app-long --scale quick --quiet
	$(REPORT) results/app-long-quick --out reports/app-long \
	  --command "make reports: alma-bench run app-long --scale quick && alma-bench report results/app-long-quick"

perf: $(STAMP)
	$(BIN)/alma-bench perf --json reports/perf.json

clean:
	rm -rf results .pytest_cache build *.egg-info
