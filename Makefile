# Two entry points that work on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
N ?= 576
# Every version, direct and transitive, runtime and dev tools, with hashes (docs/deployment.md, "Versions").
LOCK := requirements.lock
DEV_LOCK := requirements-dev.lock
LATEST_VENV ?= .venv-latest

.PHONY: venv demo demo-shapes test test-all lint lock test-latest wheel bench bench-gpu evidence evidence-outcomes

# The venv is made from the lock alone: --no-deps, since the lock lists every package, and the project itself
# without build isolation (its build backend, setuptools, is locked too). pip check proves the lock covers
# pyproject's dependencies.
$(STAMP): pyproject.toml $(DEV_LOCK)
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --require-hashes --no-deps -r $(DEV_LOCK)
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	$(BIN)/pip check
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/phasescreen screen --vision pkg:efficientnet-lite0 --language pkg:all-minilm-l6-v2 \
		--dataset digits --n $(N) --output result.json

# The demo on the project's own `shapes` dataset, at the evidence grid's settings (grids/evidence.yaml: its dataset,
# N = 960, one probe, tau = 0.2), so its result lands in the shipped evidence's stratum and shows the measured
# figures beside the paper's claims. The pair is one of the grid's real-model rows.
demo-shapes: $(STAMP)
	$(BIN)/phasescreen screen --vision pkg:efficientnet-lite0 --language pkg:all-minilm-l6-v2 \
		--dataset 'shapes?colors=10&shapes=8&size=32' --n 960 --probes 1 --option failure_threshold=0.2 \
		--output result-shapes.json

# Starts PostgreSQL and Redis where they are down (.ci/services), as CI does.
test: $(STAMP)
	bash .ci/services
	$(BIN)/python -m pytest -q

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m ''

# The evidence run (docs/evidence.md): the evidence grid screened into a clean store of its own, then the study
# written as the shipped evidence file and the numbers section of docs/evidence.md with its figures.
EVIDENCE_HOME ?= .evidence
evidence: $(STAMP)
	rm -rf $(EVIDENCE_HOME) && mkdir -p $(EVIDENCE_HOME)
	PHASESCREEN_HOME=$(EVIDENCE_HOME) $(BIN)/phasescreen batch grids/evidence.yaml \
		--output $(EVIDENCE_HOME)/evidence.results.json
	PHASESCREEN_HOME=$(EVIDENCE_HOME) $(BIN)/phasescreen evidence write --out phasecore/study/evidence/shipped.json \
		--grid grids/evidence.yaml --command "make evidence"
	$(BIN)/phasescreen evidence doc --evidence phasecore/study/evidence/shipped.json \
		--results $(EVIDENCE_HOME)/evidence.results.json --page docs/evidence.md --figures docs/evidence

# The loop of reported outcomes on the evidence run (docs/evidence.md, "Reported outcomes"): the API served from the
# evidence run's own store, each pair trained for real through linear heads and reported over HTTP
# (`phasescreen outcome simulate`), then the study's reported block beside the proxy. After `make evidence`.
EVIDENCE_PORT ?= 8765
evidence-outcomes: $(STAMP)
	PHASESCREEN_HOME=$(EVIDENCE_HOME) $(BIN)/phasescreen serve --port $(EVIDENCE_PORT) & server=$$!; \
	trap "kill $$server" EXIT; \
	for i in $$(seq 60); do curl -sf http://127.0.0.1:$(EVIDENCE_PORT)/healthz > /dev/null && break; sleep 1; done; \
	PHASESCREEN_HOME=$(EVIDENCE_HOME) $(BIN)/phasescreen outcome simulate \
		--results $(EVIDENCE_HOME)/evidence.results.json --server http://127.0.0.1:$(EVIDENCE_PORT) \
		--json > $(EVIDENCE_HOME)/outcomes.json && \
	$(BIN)/phasescreen study --server http://127.0.0.1:$(EVIDENCE_PORT) --json > $(EVIDENCE_HOME)/study.json && \
	$(BIN)/phasescreen study --server http://127.0.0.1:$(EVIDENCE_PORT)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

# Refresh the lock on purpose: every package at the newest version pyproject's ranges allow (on this machine's
# indexes: torch and torchvision stay at their pins). The dev lock is constrained by the runtime lock, so both
# agree on every shared package. LOCK_ARGS="--upgrade-package transformers" moves one package only.
LOCK_ARGS ?= --upgrade
PIP_COMPILE = CUSTOM_COMPILE_COMMAND="make lock" $(BIN)/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url \
	--no-emit-find-links --no-emit-trusted-host $(LOCK_ARGS)
lock:
	test -x $(BIN)/pip-compile || { test -x $(BIN)/python || $(PY) -m venv $(VENV); $(BIN)/pip install -q pip-tools; }
	$(PIP_COMPILE) --output-file $(LOCK) pyproject.toml
	$(PIP_COMPILE) --extra dev --constraint $(LOCK) --output-file $(DEV_LOCK) pyproject.toml

# Drift found on purpose: pyproject's ranges resolved at their newest in a venv of their own, lint and the
# suite there, then which versions differ from the lock. Not part of the default CI run (.ci/run --latest).
test-latest:
	rm -rf $(LATEST_VENV)
	$(PY) -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/pip install -q --upgrade pip
	$(LATEST_VENV)/bin/pip install -q --upgrade -e '.[dev]'
	touch $(LATEST_VENV)/.installed
	$(LATEST_VENV)/bin/python .ci/drift.py $(DEV_LOCK)
	$(MAKE) lint test VENV=$(LATEST_VENV)

# The distribution: a wheel that carries the migrations and the shipped grids (tests/project/test_packaging.py
# installs it into a clean venv from the lock).
wheel: $(STAMP)
	$(BIN)/pip wheel -q --no-deps --no-build-isolation -w dist .


bench: $(STAMP)
	$(BIN)/python bench/ntk_engine.py

# On a lent GPU, through the device tool: `make bench-gpu` (or bash bench/gpu.sh) with carry bench/.whl.
# Here: make bench-gpu DEVICE=cpu BENCH_GPU_ARGS=--smoke (tiny sizes, the same code). No venv step: the GPU
# machine runs its own python3.
bench-gpu:
	PYTHON=$$(test -x $(BIN)/python && echo $(BIN)/python || echo python3) \
		bash bench/gpu.sh $(if $(DEVICE),--device $(DEVICE),) $(BENCH_GPU_ARGS)

# The zoo demo (docs/zoo.md): a small joint pair and its unimodal twin (the same architectures trained alone),
# crossed, trained on `shapes` into an empty home of their own and screened at the evidence grid's settings;
# the table prints each pair's verdict side by side (failed: no = aligned, yes = failed, n/a = inconclusive).
DEMO_ZOO_HOME ?= .demo-zoo
.PHONY: demo-zoo
demo-zoo: $(STAMP)
	rm -rf $(DEMO_ZOO_HOME) && mkdir -p $(DEMO_ZOO_HOME)
	PHASESCREEN_HOME=$(DEMO_ZOO_HOME) $(BIN)/phasescreen batch grids/demo-zoo.yaml \
		--output $(DEMO_ZOO_HOME)/demo-zoo.results.json
