# The two newcomer commands are `make demo` and `make test` (see README). Both set up .venv first.
VENV ?= .venv
BIN := $(VENV)/bin
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home
EXPERIMENT ?= arith-sim-01

CAMPAIGN ?= grid-sim-01

.PHONY: demo test ui setup campaign chromium

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

test: setup chromium
	$(BIN)/ruff check lsl_dagster lsl_dagster_tests bench
	$(BIN)/ruff format --check lsl_dagster lsl_dagster_tests bench
	$(BIN)/pytest

chromium:
	@command -v chromium >/dev/null || { $(SUDO) apt-get update && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y --no-install-recommends chromium; }

# A campaign (data/campaigns/$(CAMPAIGN).yaml): its experiments as tagged runs, then its table.
campaign: setup
	$(BIN)/lsl campaign run $(CAMPAIGN)

# The Dagster UI on http://127.0.0.1:3000 (lineage, partitions, launch buttons, metadata).
ui: setup
	$(BIN)/dagster dev
