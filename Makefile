# kkmtransfer — the two commands: `make run` and `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
HOST   ?= 127.0.0.1
PORT   ?= 8080

.PHONY: help install run test wsdl bench worker beat clean

help:
	@echo "make run    - install, create the demo SQLite database, serve SOAP and the console (/admin/) on $(HOST):$(PORT)"
	@echo "make test   - install and run the whole test suite (SQLite, PostgreSQL, Redis)"
	@echo "make wsdl   - regenerate wsdl/KKMTransfer.wsdl from the service definition"
	@echo "make worker - run a Celery worker (broker: KKMTRANSFER_BROKER_URL, default local Redis)"
	@echo "make beat   - run Celery beat (nightly regulation at 02:00 in the business time zone)"
	@echo "make bench  - benchmarks on PostgreSQL: online (gunicorn + wrk) and bulk, beside their ceilings"
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
	@test -s var/secret_key || (umask 077 && $(BIN)/python -c "import secrets; print(secrets.token_urlsafe(48))" > var/secret_key)
	KKMTRANSFER_SECRET_KEY="$$(cat var/secret_key)" $(BIN)/kkmtransfer serve --host $(HOST) --port $(PORT)

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

# Speed and memory targets: each script prints its times beside its ceiling measured in the same run.
# The whole target takes under 15 minutes on 2 cores: the bulk benchmarks run at a tenth or a fifth of
# their full size (the ratios hold); BENCH_SIZE=full runs them at 1,000,000 rows / lots (much longer).
# BENCH_ONLINE_ARGS passes options to bench_online.py (e.g. "--seconds 8").
BENCH_SIZE ?= quick
ifeq ($(BENCH_SIZE),full)
BENCH_NIGHTLY_ARGS ?=
BENCH_JOURNAL_ARGS ?=
BENCH_ACTIONS_ARGS ?=
else
BENCH_NIGHTLY_ARGS ?= --lots 200000
BENCH_JOURNAL_ARGS ?= --rows 100000 --small 10000 --cards 10000
BENCH_ACTIONS_ARGS ?= --cards 100000
endif

bench: install
	@command -v wrk >/dev/null || { echo "the online benchmark needs wrk: apt-get install -y wrk (Debian/Ubuntu package wrk)"; exit 1; }
	@start=$$(date +%s); cd bench && \
	../$(BIN)/python bench_online.py $(BENCH_ONLINE_ARGS) && \
	../$(BIN)/python bench_nightly.py $(BENCH_NIGHTLY_ARGS) && \
	../$(BIN)/python bench_journal.py $(BENCH_JOURNAL_ARGS) && \
	../$(BIN)/python bench_actions.py $(BENCH_ACTIONS_ARGS) && \
	../$(BIN)/python bench_session.py && \
	../$(BIN)/python bench_console.py && \
	../$(BIN)/python bench_certificates.py && \
	echo "make bench: all benchmarks in $$(( $$(date +%s) - start )) s (load average now: $$(cut -d' ' -f1-3 /proc/loadavg))"

clean:
	rm -rf $(VENV) var build *.egg-info .pytest_cache
