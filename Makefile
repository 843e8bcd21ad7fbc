# The two commands a newcomer needs:
#   make demo   runs the main job end to end on the embedded default
#   make test   runs the whole test suite (what .ci/run calls)
# Both set everything up first: a .venv with the project, the Kafka broker jars, and kcat.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test setup tools lint bench mutate broker-start broker-stop clean

demo: setup
	$(BIN)/stream demo

test: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/python -m benchmarks.run

# Mutation testing of the modules that hold the promises ([tool.mutmut] in pyproject.toml), with
# the tests that need no broker; prints the score per module and fails below 90%. The tests on the
# S3 server run against one local server started for the whole run (not one per mutant). Not part
# of `make test`: see README "Mutation score" for how long it takes.
mutate: setup
	$(BIN)/python -m s3_local start >/dev/null
	env $$($(BIN)/python -m s3_local status) $(BIN)/mutmut run; code=$$?; \
	  $(BIN)/python -m s3_local stop; exit $$code
	$(BIN)/python -m tests.mutation_score

lint: setup
	$(BIN)/ruff check .

setup: tools

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

# Debian packages the tests use: kcat (an independent Kafka client to cross-check with), chromium and
# chromedriver (the dashboard test), curl (the README's API examples) and chattr (the test that makes
# a snapshot folder immutable under a running service). The jars are the local broker.
DEBIAN_TOOLS := kcat:kcat chromium:chromium chromedriver:chromium-driver curl:curl chattr:e2fsprogs

tools: $(VENV)/.installed
	@missing=""; for tool in $(DEBIAN_TOOLS); do \
	  command -v $${tool%%:*} >/dev/null 2>&1 || missing="$$missing $${tool#*:}"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing ..."; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq $$missing >/dev/null; fi
	@$(BIN)/python -m kafka_local fetch
	@$(BIN)/python -m s3_local fetch

broker-start: setup
	$(BIN)/python -m kafka_local start

broker-stop:
	$(BIN)/python -m kafka_local stop

clean:
	rm -rf $(VENV) .kafka-local .s3-local .pytest_cache .ruff_cache mutants
