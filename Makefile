# Two commands on a fresh machine:
#   make demo   create .venv (reused when present) and run the main job on a small default
#   make test   the same environment plus test-only references, then the whole test suite
#               (~6 min on 2 cores from a clean clone: two pytest workers; PYTEST_WORKERS=0: one process)
#   make test-full  the same with the statistical checks at full power (LENSING_FULL_TESTS=1)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
OUT ?= outputs/demo

.PHONY: demo test test-full gpu-check bench venv clean

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip -q
	$(PY) -m pip install -r requirements.txt
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed requirements-test.txt
	$(PY) -m pip install -r requirements-test.txt
	touch $@

# Main job: simulate a small microlensing set (baseline preset, survey population, variables), train the fast classifier on it,
# evaluate the held-out test split; prints where the plots and metrics are (~2 min on 2 CPU cores).
demo: venv
	mkdir -p $(OUT)
	$(PY) simulate.py --task microlensing --n-flat 300 --n-pspl 300 --n-binary 300 --n-variable 300 \
		--binary-preset baseline --seed 42 --num-workers 2 --overwrite \
		--output $(OUT)/microlensing.h5 --preview $(OUT)/microlensing_examples.png
	rm -rf $(OUT)/results/demo
	$(PY) train.py --data $(OUT)/microlensing.h5 --output $(OUT)/results --experiment-name demo \
		--epochs 8 --batch-size 32 --lr 1e-3
	$(PY) evaluate.py --run $(OUT)/results/demo --data $(OUT)/microlensing.h5
	@echo "data: $(OUT)/microlensing.h5   run: $(OUT)/results/demo   plots and metrics: $(OUT)/results/demo/eval_microlensing/"

PYTEST_WORKERS ?= 2
PYTEST_ARGS = -q $(if $(filter 0,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS) --dist worksteal)

test: $(VENV)/.installed-test
	$(PY) -m pytest $(PYTEST_ARGS)

test-full: $(VENV)/.installed-test
	LENSING_FULL_TESTS=1 $(PY) -m pytest $(PYTEST_ARGS)

# the GPU check (bench/gpu_check.sh) into $(GPU_OUT); says so and stops where there is no CUDA
GPU_OUT ?= outputs/gpu_check
gpu-check: $(VENV)/.installed-test
	PY=$(PY) bash bench/gpu_check.sh $(GPU_OUT)

bench: $(VENV)/.installed-test
	$(PY) bench/bench_simulate.py
	$(PY) bench/bench_train.py --parts throughput
	$(PY) bench/bench_lens_simulate.py --parts throughput memory

clean:
	rm -rf outputs .pytest_cache
