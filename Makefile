# The README's two commands: `make demo` and `make test`. Each creates .venv with pip on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export NO_ALBUMENTATIONS_UPDATE := 1
export HF_HUB_OFFLINE := 1
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: demo test test-slow lint format bench gpu-check clean venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q -m "not slow"

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

# The whole pipeline on the embedded demo data: check the data, train both stages (resuming if interrupted or
# already done), then the test split's report twice: at the paper's threshold 0.5, and at per-class thresholds tuned
# on the validation split for 90 % recall (saved to runs/demo/thresholds.json). A few minutes on a 2-core CPU.
demo: $(STAMP)
	$(BIN)/probmcl-med data check --dataset demo --sample 200
	$(BIN)/probmcl-med train --dataset demo --resume
	$(BIN)/probmcl-med evaluate --checkpoint runs/demo --split test --threshold 0.5 --report runs/demo/report-0.5
	$(BIN)/probmcl-med evaluate --checkpoint runs/demo --split test --tune-thresholds recall=0.9 --save \
		--report runs/demo/report
	@echo "reports: runs/demo/report/report.html (tuned thresholds), runs/demo/report-0.5/report.html (0.5)"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_contrastive.py
	$(BIN)/python benchmarks/bench_metrics.py
	$(BIN)/python benchmarks/bench_data.py
	$(BIN)/python benchmarks/bench_train.py
	$(BIN)/python benchmarks/bench_refusal.py

# On a machine with CUDA: the CUDA-marked tests, the GPU benchmarks and a Triton launch-shape sweep, one JSON report
# (gpu-check.json), under 10 minutes; elsewhere one line and exit 0. Uses .venv when there is one, else python3 with
# the repository on PYTHONPATH (GPU machines often come with torch and triton and without network).
gpu-check:
	$(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON)) benchmarks/gpu_check.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
