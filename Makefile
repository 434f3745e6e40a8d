# imagestream developer commands. `make install` builds .venv; `make run` is the offline demo.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install run up test fuzz lint format schemas bench bench-engines bench-scaleout bench-peers clean

install: $(STAMP)

# torch first, pinned to the CPU build this machine ships: anything that pulls torch
# before it makes pip resolve a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[embedded,dev,bench]"
	# No deps: deepface's own list pulls TensorFlow (retina-face) and onnxruntime; the
	# PyTorch path needs only what pyproject lists.
	$(BIN)/pip install -q --no-deps deepface==0.0.103
	@command -v kcat >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
		&& (apt-get install -y -qq kcat >/dev/null 2>&1 || (apt-get update -qq >/dev/null 2>&1 \
		&& apt-get install -y -qq kcat >/dev/null 2>&1)) || echo "kcat not installed: its test will skip"; }
	@# Debian's Tesseract: the ocr task runs its binary (consumers/models/tesseract.py); its
	@# tests render their text with the DejaVu fonts.
	@{ command -v tesseract && [ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ]; } >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
		&& (apt-get install -y -qq --no-install-recommends tesseract-ocr tesseract-ocr-eng fonts-dejavu-core >/dev/null 2>&1 \
		|| (apt-get update -qq >/dev/null 2>&1 \
		&& apt-get install -y -qq --no-install-recommends tesseract-ocr tesseract-ocr-eng fonts-dejavu-core >/dev/null 2>&1)) \
		|| echo "tesseract not installed: the ocr task and its tests will fail"; }
	@# Debian's prometheus: promtool checks the rules, and a real server scrapes a test stack.
	@command -v promtool >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
		&& (apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1 \
		|| (apt-get update -qq >/dev/null 2>&1 \
		&& apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1)) \
		|| echo "prometheus not installed: its tests will fail"; }
	@# Debian's chromium + chromedriver: the demo page's browser test drives them.
	@command -v chromedriver >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
		&& (apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1 \
		|| (apt-get update -qq >/dev/null 2>&1 \
		&& apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1)) \
		|| echo "chromium not installed: the demo page test will fail"; }
	@install -m 755 infra/bin/kcat $(BIN)/kcat
	@touch $@

run: install
	$(BIN)/imagestream demo

up: install
	$(BIN)/imagestream up

# Test files run in 3 worker processes (pytest-xdist), each file whole in one worker so its
# module fixtures start once: the suite mostly waits on servers, so 3 workers on 2 cores
# take ~4 minutes instead of ~9.5. TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 3
test: install lint
	$(BIN)/imagestream schemas --check
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile

# The record-boundary property tests with 20,000 examples each (make test runs 100).
fuzz: install
	HYPOTHESIS_PROFILE=fuzz $(BIN)/pytest -p no:cacheprovider --timeout=0 tests/pipeline/test_boundary_properties.py

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

schemas: install
	$(BIN)/imagestream schemas

# The CPU load test (docs/performance.md): bare encoder, legacy loop, then a consumer
# process through the embedded broker, S3 server and milvus-lite. Last line: efficiency=<ratio>.
bench: install
	$(BIN)/imagestream loadtest --model random:vit-b-32 --batch 32 --out .imagestream/bench

# Bare images/s of every engine and precision, round-robin in one process
# (docs/engines.md). Last line: fastest=<engine>/<precision> x<ratio to torch fp32>.
bench-engines: install
	$(BIN)/imagestream bench engines --model random:vit-b-32 --batch 32

# 1, 2, 4 consumers on a simulated GPU (sim:40ms/32) against the Milvus server
# (docs/benchmarks-peers.md): images/s, CPU ms per image, cores to feed one GPU.
bench-scaleout: install
	$(BIN)/imagestream bench scaleout --model sim:40ms/32 --consumers 1 2 4

# Infinity (infinity-emb) beside imagestream on the same checkpoint and JPEGs
# (docs/benchmarks-peers.md). Infinity gets its own venv: it pins transformers < 5,
# and any torch other than the local CPU build pulls CUDA wheels (hence the constraint);
# the torchvision it brings does not match that torch and its CLIP path does not need it.
INFINITY_VENV ?= .venv-infinity
$(INFINITY_VENV)/.installed:
	$(PYTHON) -m venv $(INFINITY_VENV)
	$(INFINITY_VENV)/bin/pip install -q --upgrade pip
	$(INFINITY_VENV)/bin/pip install -q torch==2.13.0
	echo "torch==2.13.0" > $(INFINITY_VENV)/constraints.txt
	$(INFINITY_VENV)/bin/pip install -q -c $(INFINITY_VENV)/constraints.txt \
		"infinity-emb[server,vision]==0.0.78" "transformers<5" aiohttp protobuf
	$(INFINITY_VENV)/bin/pip uninstall -y -q torchvision
	@touch $@

bench-peers: install $(INFINITY_VENV)/.installed
	$(BIN)/python -m loadtest.peers --venv $(INFINITY_VENV)

clean:
	rm -rf .imagestream .pytest_cache .mypy_cache .ruff_cache
