# fusednorm: the two README commands.
#   make test   -- set up (venv, pinned CPU torch when none is importable, the package),
#                  compile-check the CUDA sources when nvcc is present, run the test suite
#   make bench  -- set up, then the GPU microbenchmarks (or, without a GPU, the self-check
#                  of every available backend against the reference)
SHELL := /bin/bash
ifdef VIRTUAL_ENV
PY := python
else
PY := .venv/bin/python
endif
PYTEST_ARGS ?= -q

.PHONY: setup test test-py cuda-check bench bench-full gpu-check clean

setup:
	@if [ -z "$$VIRTUAL_ENV" ] && [ ! -x .venv/bin/python ]; then \
		echo "[setup] creating .venv"; python3 -m venv .venv; fi
	@$(PY) -c "import torch" 2>/dev/null || { echo "[setup] installing pinned CPU torch"; \
		$(PY) -m pip install -q -r requirements-ci.txt; }
	@$(PY) -c "import triton, numpy, pytest, pytest_timeout, matplotlib, sklearn, pandas, expecttest, hypothesis" 2>/dev/null || \
		$(PY) -m pip install -q -r requirements-ci.txt
	@$(PY) -c "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in \
		('transformers', 'timm', 'diffusers')))" 2>/dev/null || { \
		echo "[setup] installing the model libraries (optional test dependencies)"; \
		$(PY) -m pip install -q -r requirements-models.txt || { [ -z "$$CI" ] || exit 1; \
		echo "[setup] model libraries not installed: tests/test_adapters.py will skip"; }; }
	@$(PY) -c "import fusednorm" 2>/dev/null || \
		$(PY) -m pip install -q --no-build-isolation --no-deps -e .

cuda-check:
	@if command -v nvcc >/dev/null; then PYTHON=$(PY) bash csrc/check_compile.sh; \
	else echo "[cuda-check] nvcc not found: CUDA sources not compile-checked"; fi

test-py:
	$(PY) -m pytest tests $(PYTEST_ARGS)

test: setup cuda-check test-py

bench: setup
	$(PY) bench/run.py --quick

bench-full: setup
	$(PY) bench/run.py

gpu-check:
	bash bench/gpu_check.sh

clean:
	rm -rf build *.egg-info python/*.egg-info .pytest_cache bench/out
