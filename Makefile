# kkmtransfer — the two commands: `make run` and `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
HOST   ?= 127.0.0.1
PORT   ?= 8080

.PHONY: help install run test wsdl bench worker beat clean

help:
	@echo "make run    - install, create the demo SQLite database and serve SOAP on $(HOST):$(PORT)"
	@echo "make test   - install and run the whole test suite (SQLite, PostgreSQL, Redis)"
	@echo "make wsdl   - regenerate wsdl/KKMTransfer.wsdl from the service definition"
	@echo "make worker - run a Celery worker (broker: KKMTRANSFER_BROKER_URL, default local Redis)"
	@echo "make beat   - run Celery beat (nightly regulation at 02:00 in the business time zone)"
	@echo "make bench  - benchmarks on PostgreSQL (prints times beside bare SQL)"
	@echo "make clean  - remove the virtualenv and the local database"

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) is required (spyne 2.14 does not run on 3.12+)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): setup.py setup.cfg | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $@

install: $(STAMP)

run: install
	$(BIN)/kkmtransfer demo
	$(BIN)/kkmtransfer serve --host $(HOST) --port $(PORT)

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

worker: install
	$(BIN)/celery -A kkmtransfer.tasks worker --loglevel INFO --concurrency 2

beat: install
	mkdir -p var
	$(BIN)/celery -A kkmtransfer.tasks beat --loglevel INFO --schedule var/celerybeat-schedule

wsdl: install
	$(BIN)/python -m kkmtransfer.soap.wsdl > wsdl/KKMTransfer.wsdl.tmp
	mv wsdl/KKMTransfer.wsdl.tmp wsdl/KKMTransfer.wsdl
	@echo "wsdl/KKMTransfer.wsdl written"

# Speed and memory targets: each script prints its times beside bare SQL measured in the same run.
bench: install
	cd bench && ../$(BIN)/python bench_nightly.py
	cd bench && ../$(BIN)/python bench_journal.py
	cd bench && ../$(BIN)/python bench_actions.py
	cd bench && ../$(BIN)/python bench_certificates.py

clean:
	rm -rf $(VENV) var build *.egg-info .pytest_cache
