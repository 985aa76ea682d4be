# Two commands on a fresh machine: `make demo` and `make test`. Everything else is set up by them.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install tools demo test test-unit test-integration test-deploy kafka faults bench soak lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[embedded,chat,report,test]'
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install adpulse with the embedded stack, report charts and test tools

tools:  ## promtool, prometheus, amtool (deploy tests) and chromium (report tests); apt-get installs them if missing
	bash deploy/setup-tools.sh

demo: $(STAMP)  ## the embedded stack, a worker, simulated traffic and a live view (Ctrl-C stops it all)
	$(BIN)/adpulse demo

# Integration tests marked `kafka` run twice: on the embedded Tansu and on a real Apache Kafka, and those marked
# `cluster` on a 3-node Kafka (Java 17 and Maven needed; without them these are skipped, except under CI=true).
test: $(STAMP) tools  ## unit, integration (real brokers + Redis on loopback), e2e, deploy and the short fault tests
	$(BIN)/python -m pytest tests -q -m "not faults_long"

test-unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit -q

test-integration: $(STAMP)
	$(BIN)/python -m pytest tests/integration tests/e2e -q

test-deploy: $(STAMP) tools  ## compose, Dockerfile, Prometheus rules, dashboards; a real Prometheus on loopback
	$(BIN)/python -m pytest tests/deploy -q

faults: $(STAMP)  ## every fault scenario, the long ones too (docs/reliability.md); prints the fault table
	$(BIN)/python -m pytest tests/faults -q

lint: $(STAMP)  ## ruff's rules, ruff's format check and mypy (config in pyproject.toml); CI runs it first
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

kafka: $(STAMP) tools  ## every test on real Apache Kafka: the Kafka half of `make test` and the 3-node cluster tests
	$(BIN)/python -m pytest tests -q -m "kafka or kafka_only or cluster" -k "not tansu"

bench: $(STAMP)  ## throughput of one worker against the raw aiokafka ceiling (writes BENCHMARKS.md)
	$(BIN)/python benchmarks/throughput.py

SOAK_MINUTES ?= 30

soak: $(STAMP)  ## one worker, simulated traffic with scenarios for SOAK_MINUTES (30): CSV + PNG in benchmarks/results/
	$(BIN)/python benchmarks/soak.py --minutes $(SOAK_MINUTES)

clean:
	rm -rf $(VENV) .adpulse .pytest_cache .hypothesis .ruff_cache .mypy_cache
