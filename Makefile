# neroic: set-up, tests, benchmarks and batch processing.
#
#   make setup                 install everything into .venv (or the active virtualenv)
#   make test                  run the test suite
#   make bench                 speed benchmarks (see bench/)
#   make bench-quality         the whole pipeline on rendered Spot captures against ground truth
#   make bench-wild            the pipeline on "online collection" captures (../shared/data) against their truth
#   make bench-registration    the poses stage on every capture with reference cameras, and its model checks
#   make gpu-check             parity tests, throughput and the example end to end on a CUDA GPU
#   make batch CAPTURES=dir OUT=dir [BATCH_ARGS="--engine ray --keep-going"]
#                              `neroic batch`: each CAPTURES/NAME/ folder into OUT/NAME.glb,
#                              redoing only what changed (see the README's batch section)

VENV     ?= $(if $(VIRTUAL_ENV),$(VIRTUAL_ENV),.venv)
PYTHON   := $(VENV)/bin/python
NEROIC   := $(VENV)/bin/neroic
TORCH_CPU_VERSION ?= 2.13.0

.PHONY: setup system-deps test bench bench-quality bench-wild bench-registration gpu-check batch

setup: system-deps
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	# Without a GPU, take the CPU build of torch first; a GPU user's own CUDA build is kept.
	if ! command -v nvidia-smi >/dev/null && ! $(PYTHON) -c "import torch" 2>/dev/null; then \
	  $(PYTHON) -m pip install --quiet "torch==$(TORCH_CPU_VERSION)"; fi
	# The ray extra: `neroic batch --engine ray`, tested by the suite.
	$(PYTHON) -m pip install --quiet -e ".[dev,ray]"
	$(NEROIC) install-weights
	# The native field kernels (C++/OpenMP) with this machine's compiler; without one, PyTorch runs.
	$(PYTHON) -m stages.field.kernels
	# The Khronos glTF validator and three.js (for the export stage's checks and screenshot).
	npm ci --prefix tools/node --no-audit --no-fund --loglevel=error
	# rembg's first import compiles numba code (about a minute); do it once here.
	$(PYTHON) -c "import rembg" 2>/dev/null
	@echo "set-up done: activate with  . $(VENV)/bin/activate"

# open3d needs libusb at import time; chromium renders the exported GLB for its screenshot.
system-deps:
	@if ! ldconfig -p | grep -q libusb-1.0 || ! command -v chromium >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq libusb-1.0-0 chromium >/dev/null; \
	  else echo "please install libusb-1.0-0 and chromium (e.g. sudo apt-get install libusb-1.0-0 chromium), then rerun make setup"; exit 1; fi; \
	fi

test:
	$(PYTHON) -m pytest -q

bench:
	$(PYTHON) -m bench

# About 20 minutes on a 2-core CPU: geometry under constant light, then all stages under a random
# light per photo; figures in bench-runs/spot-*/metrics.json.
bench-quality:
	$(PYTHON) -m bench.spot_quality --out bench-runs/spot-constant --lighting constant --until geometry --eval-every 50
	$(PYTHON) -m bench.spot_quality --out bench-runs/spot-random --lighting random --specular 0.15 --shadows

# The online-collection captures of ../shared/data and the skull example, each scored against its
# truth (bench/wild.py; about an hour on 2 cores); results in bench-runs/wild/CASE/metrics.json.
# With NEROIC_BLENDER_PYTHON=<a Python with bpy> (see bench/blender_relit.py) the spot-wild cases
# also path-trace the GLB in Blender under the held-out environments and score it.
WILD_CASES ?= spot-wild-true spot-wild dino ethiopian-head skull
bench-wild:
	for case in $(WILD_CASES); do $(PYTHON) -m bench.wild $$case || exit 1; done

# The poses stage alone on milk, spot-wild, ethiopian_head, dino, skull01, kermit and captures made to
# trap it (bench/registration.py; about 40 minutes on 2 cores): bench-runs/registration/registration.md.
bench-registration:
	$(PYTHON) -m bench.registration --out bench-runs/registration

gpu-check:
	$(PYTHON) -m bench.gpu_check

# Batch: a thin wrapper of `neroic batch` (it schedules the stages of every capture itself, so no -j).
CAPTURES ?= captures
OUT      ?= out
BATCH_ARGS ?=

batch:
	$(NEROIC) batch $(CAPTURES) --out $(OUT) $(BATCH_ARGS)
