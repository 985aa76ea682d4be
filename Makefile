# Two commands on a fresh machine: `make demo` and `make test`. Everything else is set up by them.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-unit test-integration bench lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[embedded,chat,test]'
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install adpulse with the embedded stack and test tools

demo: $(STAMP)  ## the embedded stack, a worker, simulated traffic and a live view (Ctrl-C stops it all)
	$(BIN)/adpulse demo

test: $(STAMP)  ## unit, integration (real broker + Redis on loopback) and e2e tests
	$(BIN)/python -m pytest tests -q

test-unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit -q

test-integration: $(STAMP)
	$(BIN)/python -m pytest tests/integration tests/e2e -q

bench: $(STAMP)  ## throughput of one worker against the raw aiokafka ceiling (writes BENCHMARKS.md)
	$(BIN)/python benchmarks/throughput.py

clean:
	rm -rf $(VENV) .adpulse .pytest_cache .hypothesis
