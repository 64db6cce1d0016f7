# The README's two commands: `make test` and `make bench`. Each creates what it needs: a virtual
# environment in .venv with pinned dependencies, then the extension (incremental ninja build).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch unless this machine has an NVIDIA GPU.
TORCH_SPEC ?= $(shell if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then echo torch==2.14.1; else echo torch==2.13.0; fi)
NATIVE_SOURCES := setup.py $(shell find csrc -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh')
PYTEST_ARGS ?=

.PHONY: test bench build clean

$(VENV)/.deps: requirements-dev.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check "$(TORCH_SPEC)" -r requirements-dev.txt
	@touch $@

# Editable install once (puts pdcr_ext and pdcr_reference on the path), then in-place ninja
# rebuilds that recompile only what changed.
$(VENV)/.built: $(VENV)/.deps $(NATIVE_SOURCES)
	@if [ ! -f $(VENV)/.installed ]; then \
		$(PY) -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps -e . && touch $(VENV)/.installed; \
	fi
	$(PY) setup.py -q build_ext --inplace
	@touch $@

build: $(VENV)/.built

test: build
	$(PY) -m pytest tests $(PYTEST_ARGS)

bench: build
	$(PY) benchmarks/bench_ops.py

clean:
	rm -rf build pdcr_ext/_C*.so *.egg-info $(VENV)/.built
