# `make run` and `make test` each set up .venv on their own (first time: a few minutes).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-slow lint reports perf perf-quick gpu-check clean report-quickstart \
	report-app-density report-app-long report-dpr-trainability report-sparsity-schedules \
	report-lottery report-lottery-imp-q report-alma-cl

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/alma-bench run quickstart

# the default run (under 10 minutes on 2 cores); test-slow adds the longer ones (Ray, pools)
test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

lint: $(STAMP)
	$(BIN)/ruff check .

# Published reports: run each suite that can run on this machine, then regenerate reports/.
# Finished runs in results/ are reused (run directories are keyed by config hash).
REPORT = $(BIN)/alma-bench report
RUN = $(BIN)/alma-bench run
DENSITIES = [0.1,0.2,0.3663573774335656]
reports: report-quickstart report-app-density report-app-long \
	report-dpr-trainability report-sparsity-schedules report-lottery report-lottery-imp-q \
	report-alma-cl

report-quickstart: $(STAMP)
	$(RUN) quickstart --quiet
	$(REPORT) results/quickstart --out reports/quickstart \
	  --command "make reports: alma-bench run quickstart && alma-bench report results/quickstart"

# APP on real CIFAR-10 images (quick scale, 3 seeds), with osp-snip, app-snip and gmp swept
# over three final densities (0.366, the suite's default, is the APP paper's final density):
# one results folder, one report (accuracy vs density, paired comparisons at equal density)
SWEEP = --strategies dense,osp-snip,app-snip,gmp --grid strategies.osp-snip.density=$(DENSITIES) \
	--grid strategies.app-snip.density=$(DENSITIES) --grid strategies.gmp.density=$(DENSITIES)
report-app-density: $(STAMP)
	$(RUN) app-cifar10 --scale quick --quiet $(SWEEP)
	$(REPORT) results/app-cifar10-quick --out reports/app-density \
	  --command "make report-app-density: alma-bench run app-cifar10 --scale quick $(SWEEP) && alma-bench report results/app-cifar10-quick"
	printf '\n## Does APP beat OSP at equal density?\n\nPaired over the 3 shared seeds, 95%% t-intervals (`alma-bench compare results/app-cifar10-quick --baseline "osp-snip[density=D]" --metric final_test_acc cer`, one line per density):\n\n```\n' >> reports/app-density/README.md
	for d in 0.1 0.2 0.3663573774335656; do $(BIN)/alma-bench compare results/app-cifar10-quick \
	  --baseline "osp-snip[density=$$d]" --metric final_test_acc cer \
	  | grep -E "^(app-snip|gmp)\[density=$$d\] vs" >> reports/app-density/README.md; done
	printf '```\n' >> reports/app-density/README.md

report-app-long: $(STAMP)
	$(RUN) app-long --scale quick --quiet
	$(REPORT) results/app-long-quick --out reports/app-long \
	  --command "make reports: alma-bench run app-long --scale quick && alma-bench report results/app-long-quick"

report-dpr-trainability: $(STAMP)
	$(RUN) dpr-trainability --scale quick --quiet
	$(REPORT) results/dpr-trainability-quick --out reports/dpr-trainability \
	  --command "make reports: alma-bench run dpr-trainability --scale quick && alma-bench report results/dpr-trainability-quick"
	printf '\n## Does DPR beat its ablations (b), (c), (d)?\n\nPaired over the 3 shared seeds, 95%% t-intervals (`alma-bench compare results/dpr-trainability-quick --baseline "dpr-0.1[stream.megabatches=N]"`, offline N = 1 and the ALMA stream N = 4; a negative difference: the ablation is worse than DPR):\n\n```\n' >> reports/dpr-trainability/README.md
	for n in 1 4; do $(BIN)/alma-bench compare results/dpr-trainability-quick \
	  --baseline "dpr-0.1[stream.megabatches=$$n]" --metric final_test_acc cer \
	  | grep -E "megabatches=$$n\] vs" >> reports/dpr-trainability/README.md; done
	printf '```\n' >> reports/dpr-trainability/README.md

report-sparsity-schedules: $(STAMP)
	$(RUN) sparsity-schedules --scale quick --quiet
	$(REPORT) results/sparsity-schedules-quick --out reports/sparsity-schedules \
	  --command "make reports: alma-bench run sparsity-schedules --scale quick && alma-bench report results/sparsity-schedules-quick"

report-lottery: $(STAMP)
	$(RUN) lottery --scale quick --quiet
	$(REPORT) results/lottery-quick --out reports/lottery \
	  --command "make reports: alma-bench run lottery --scale quick && alma-bench report results/lottery-quick"
	printf '\n## Does the rewound ticket beat the re-initialised ticket and random pruning?\n\nPaired over the 3 shared seeds, 95%% t-intervals (`alma-bench compare results/lottery-quick --baseline imp`; a negative difference: worse than the rewound ticket):\n\n```\n' >> reports/lottery/README.md
	$(BIN)/alma-bench compare results/lottery-quick --baseline imp --metric final_test_acc cer \
	  | grep -E " vs imp" >> reports/lottery/README.md
	printf '```\n' >> reports/lottery/README.md

# IMP-Q (learning from its own levels) against IMP and its untrained greedy policy
IMPQ = --strategies imp,imp-q,imp-q-untrained,imp-q-full
report-lottery-imp-q: $(STAMP)
	$(RUN) lottery --scale quick --quiet $(IMPQ)
	$(REPORT) results/lottery-quick --out reports/lottery-imp-q \
	  --command "make report-lottery-imp-q: alma-bench run lottery --scale quick $(IMPQ) && alma-bench report results/lottery-quick --out reports/lottery-imp-q"

report-alma-cl: $(STAMP)
	$(RUN) alma-cl --scale quick --quiet
	$(REPORT) results/alma-cl-quick --out reports/alma-cl \
	  --command "make reports: alma-bench run alma-cl --scale quick && alma-bench report results/alma-cl-quick"
	printf '\n## Does a continual-learning method beat the dense warm start?\n\nPaired over the 3 shared seeds, 95%% t-intervals (`alma-bench compare results/alma-cl-quick --baseline dense`):\n\n```\n' >> reports/alma-cl/README.md
	$(BIN)/alma-bench compare results/alma-cl-quick --baseline dense --metric final_test_acc cer \
	  | grep -E " vs dense" >> reports/alma-cl/README.md
	printf '```\n' >> reports/alma-cl/README.md

# Speed (docs/perf.md). perf: every ratio interleaved until its 95% interval is within +-2%
# (or 600 s), the end-to-end runs, reports/perf.md. perf-quick: the ratios only (minutes).
perf: $(STAMP)
	$(BIN)/alma-bench perf --json reports/perf.json

perf-quick: $(STAMP)
	$(BIN)/alma-bench perf --quick

# On a CUDA machine, under 10 minutes: determinism, throughput, concurrent runs -> reports/gpu.md
# (the device machine has no venv: docs/perf.md says how to carry the wheels). Never part of
# `make test`; tests/test_perf_modes.py runs its plumbing on CPU.
gpu-check: $(STAMP)
	$(BIN)/alma-bench perf --gpu-check --json reports/gpu.json

clean:
	rm -rf results .pytest_cache build *.egg-info
