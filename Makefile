# Two commands: `make serve` and `make test`. Both install first when needed.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
STAMP := $(VENV)/.installed

.PHONY: install serve test lint format default-onnx models bench web-screenshot fuzz clean

# torch is pinned to the CPU wheel (torch==2.13.0 via the [train] extra); an unpinned torch pulls CUDA.
$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The service serves the model repository artifacts/models/<name>/{model.onnx, model.fp16.onnx, card.json},
# a build artifact exported from weights/<name>.safetensors (parity-checked). Up-to-date models are skipped
# (card sha256 = weights sha256) without importing torch, so this is quick when nothing changed.
models: $(STAMP) $(wildcard weights/*.safetensors)
	$(BIN)/drrn models build

default-onnx: models

serve: $(STAMP) models
	$(BIN)/drrn serve --host $(HOST) --port $(PORT)

# deploy-tools installs the Debian validators (nginx, promtool, docker-compose) when root; see deploy/check.mk.
# test runs lint's checks first (lint is its first prerequisite), then the suite.
test: $(STAMP) lint deploy-tools
	$(BIN)/pytest -q

# Decoder fuzzing beyond make test's fixed, derandomised budget: random cases (FUZZ_EXAMPLES per format),
# failures kept in Hypothesis' database (.hypothesis/) and replayed first on the next run; each case still
# has its deadline, the whole run no timeout (about 7 minutes at the default on 2 cores).
FUZZ_EXAMPLES ?= 20000
fuzz: $(STAMP)
	DRRN_FUZZ_PROFILE=fuzz DRRN_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/pytest -q -p no:cacheprovider --timeout 0 \
		tests/test_decoder_fuzz.py -k mutated

# lint-imports: the one-way package layers and no import cycles ([tool.importlinter] in pyproject.toml).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Benchmarks (minutes; run on a quiet machine). Results land in docs/bench/, summarised in BENCHMARKS.md.
bench: $(STAMP) models
	$(BIN)/drrn bench engine --no-b1u25 --budget-s 1 --json docs/bench/engine.json
	$(BIN)/drrn bench engine --model b1u25 --tiles 64,128 --batches 1,4 \
		--backends torch-fp32,torch-bf16,ort-fp32 --budget-s 0 --json docs/bench/engine_b1u25.json
	$(BIN)/drrn bench service --spawn --json docs/bench/service.json
	$(BIN)/drrn bench service --spawn --sweep --json docs/bench/sweep.json
	$(BIN)/drrn bench scaling --json docs/bench/scaling.json
	$(BIN)/drrn bench cost --json docs/bench/cost.json
	$(BIN)/drrn bench margins --model fast --json docs/bench/margins_fast.json
	$(BIN)/drrn bench margins --model quality --data ../shared/datasets/Set5 --json docs/bench/margins_quality_set5.json
	$(BIN)/drrn bench peers --model-sets quality=Set5/bird,Set5/butterfly --max-minutes 38 --json docs/bench/peers.json --peers-plot docs/bench/peers.png
	$(BIN)/drrn bench soak --json docs/bench/soak.json

# The README's picture of the page (docs/img/web.png): the Set5 browser test on the real models, screenshotted.
web-screenshot: $(STAMP) models deploy-tools
	DRRN_WEB_SCREENSHOT=docs/img/web.png $(BIN)/pytest -q tests/test_web_browser.py -k "set5 and desktop"

include deploy/check.mk

clean:
	rm -rf artifacts .pytest_cache .ruff_cache
