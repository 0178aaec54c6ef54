# Two commands: `make serve` and `make test`. Both install first when needed.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
STAMP := $(VENV)/.installed

.PHONY: install serve test lint format default-onnx models bench clean

# torch is pinned to the CPU wheel (torch==2.13.0 via the [train] extra); an unpinned torch pulls CUDA.
$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The service needs an ONNX model; it is a build artifact exported from the shipped weights.
artifacts/default.onnx: weights/default.safetensors | $(STAMP)
	$(BIN)/drrn export weights/default.safetensors -o $@

default-onnx: artifacts/default.onnx

models: default-onnx

serve: $(STAMP) artifacts/default.onnx
	$(BIN)/drrn serve --host $(HOST) --port $(PORT)

# deploy-tools installs the Debian validators (nginx, promtool, docker-compose) when root; see deploy/check.mk.
test: $(STAMP) deploy-tools
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Benchmarks (minutes; run on a quiet machine). Results land in docs/bench/, summarised in BENCHMARKS.md.
bench: $(STAMP) artifacts/default.onnx
	$(BIN)/drrn bench engine --no-b1u25 --budget-s 1 --json docs/bench/engine.json
	$(BIN)/drrn bench engine --model b1u25 --tiles 64,128 --batches 1,4 \
		--backends torch-fp32,torch-bf16,ort-fp32 --budget-s 0 --json docs/bench/engine_b1u25.json
	$(BIN)/drrn bench service --spawn --json docs/bench/service.json
	$(BIN)/drrn bench service --spawn --sweep --json docs/bench/sweep.json
	$(BIN)/drrn bench scaling --json docs/bench/scaling.json

include deploy/check.mk

clean:
	rm -rf artifacts .pytest_cache .ruff_cache
