# The two commands a new machine needs are `make demo` and `make test` (see README.md).
# Everything installs into a project virtualenv, so a clone never disturbs (or depends on) what
# the machine's Python already has; recipes find its console scripts first on PATH.
PYTHON ?= python3
VENV ?= .venv
PY := $(abspath $(VENV))/bin/python
PIP := $(PY) -m pip
export PATH := $(abspath $(VENV))/bin:$(PATH)
# Debian packages the tests and benchmarks use as real peers: restic and borgbackup (comparison),
# dcmtk (storescu/dcmsend DICOM senders), orthanc (a real PACS receiving `restore --to-pacs`),
# chromium (the status page in a real headless browser, tests/server/test_status_page.py),
# haproxy (a real load balancer before two server nodes, tests/server/test_balanced_nodes.py),
# poppler-utils (pdftoppm: the recovery kit's PDF rasterised as a scanner would).
APT_PACKAGES ?= restic dcmtk orthanc borgbackup chromium haproxy poppler-utils

.PHONY: setup setup-system demo test test-fast check lint format types bench bench-bandwidth

setup:
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --disable-pip-version-check -e '.[test]'

setup-system:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

demo: setup
	scripts/demo.sh

# The test command (and CI's): lint, types, then the whole suite.
test: setup setup-system lint types
	$(PY) -m pytest -q -ra

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

lint:
	$(PY) -m ruff check engine server client tests benchmarks
	$(PY) -m ruff format --check engine server client tests benchmarks

format:
	$(PY) -m ruff format engine server client tests benchmarks
	$(PY) -m ruff check --fix engine server client tests benchmarks

types:
	$(PY) -m mypy

check: test

bench: setup setup-system
	$(PY) -m benchmarks.throughput
	$(PY) -m benchmarks.dicom_ratio

# Bytes on the wire per day against restic and borg (see benchmarks/README.md); pass options
# with BANDWIDTH_ARGS, e.g. make bench-bandwidth BANDWIDTH_ARGS="--rate-mbit 4 --scale 0.5".
bench-bandwidth: setup setup-system
	$(PY) -m benchmarks.bandwidth $(BANDWIDTH_ARGS)
