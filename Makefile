# Two commands on a fresh machine:
#   make demo   create .venv (reused when present) and run the main job on a small default
#   make test   the same environment plus test-only references, then the whole test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
OUT ?= outputs/demo

.PHONY: demo test bench venv clean

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip -q
	$(PY) -m pip install -r requirements.txt
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed requirements-test.txt
	$(PY) -m pip install -r requirements-test.txt
	touch $@

# Main job: a small microlensing simulation (all presets' machinery, baseline preset) and
# a PNG of example light curves per class.
demo: venv
	mkdir -p $(OUT)
	$(PY) simulate.py --task microlensing --n-flat 200 --n-pspl 200 --n-binary 200 \
		--binary-preset baseline --seed 42 --num-workers 2 --overwrite \
		--output $(OUT)/microlensing.h5 --preview $(OUT)/microlensing_examples.png
	@echo "data: $(OUT)/microlensing.h5   examples: $(OUT)/microlensing_examples.png"

test: $(VENV)/.installed-test
	$(PY) -m pytest -q

bench: $(VENV)/.installed-test
	$(PY) bench/bench_simulate.py

clean:
	rm -rf outputs .pytest_cache
