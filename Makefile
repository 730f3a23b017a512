# One command for the demo, one for the tests. Both create .venv and install what they need.
VENV ?= .venv
PY := $(VENV)/bin/python
export OMP_NUM_THREADS ?= 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test test-all bench test-min

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU build of torch first: a bare `torch` requirement would pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

setup: $(VENV)/.installed
	@# the code verifier's sandbox (rewards/sandbox.py); without it a weaker rlimit-only fallback is used
	@command -v bwrap >/dev/null || { [ "$$(id -u)" = 0 ] && { apt-get update -q >/dev/null; apt-get install -y -q bubblewrap >/dev/null; }; } || echo "note: bubblewrap missing; code rewards use the weaker rlimit sandbox"

demo: setup
	$(VENV)/bin/posttrain run recipes/tiny.yaml
	$(VENV)/bin/posttrain status runs/tiny
	@echo "report: runs/tiny/report/report/report.html"

test: setup
	$(PY) -m pytest -q

test-all: setup
	$(PY) -m pytest -q -m ""

bench: setup
	bash bench/run_all.sh

# The lowest versions pyproject.toml allows (its >= / == bounds) of the libraries the training path leans on,
# in their own venv, through the mini chain, ZeRO-2/3 under accelerate and the precision test.
MIN_VENV ?= .venv-min
MIN_PKGS := transformers trl accelerate peft datasets deepspeed
test-min:
	python3 -m venv $(MIN_VENV)
	$(MIN_VENV)/bin/python -m pip install -q --upgrade pip
	$(MIN_VENV)/bin/python -m pip install -q torch==2.13.0
	$(MIN_VENV)/bin/python -m pip install -q -e '.[dev]' $$($(MIN_VENV)/bin/python bench/lowest_versions.py $(MIN_PKGS))
	$(MIN_VENV)/bin/python -m pip list 2>/dev/null | grep -iE '^($(shell echo $(MIN_PKGS) | tr ' ' '|')) '
	$(MIN_VENV)/bin/python -m pytest -q -m "" tests/test_runs.py::test_manifest_records_what_the_issue_asks \
		tests/test_launch.py tests/test_zero3.py tests/test_precision.py
