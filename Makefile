# Two commands: `make run` (the whole service on embedded defaults) and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# Development defaults for `make run` only; set real values in the environment to override.
# The service refuses these values unless HOST is a loopback address.
export STRIPE_WEBHOOK_SECRET ?= whsec_local_development_secret
export ADMIN_TOKEN ?= local-development-admin-token
export LOG_FORMAT ?= console
export HOST ?= 127.0.0.1

.PHONY: run test test-all bench bench-peer lock clean venv messages

venv: $(STAMP)

$(STAMP): requirements.lock requirements-dev.lock pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements.lock -r requirements-dev.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/dunning run

# Two pytest-xdist workers; the tests that start processes run one at a time (tests/conftest.py).
# PYTEST_WORKERS=0 runs everything in this process.
PYTEST_WORKERS ?= 2
XDIST := -n $(PYTEST_WORKERS) --dist loadgroup

test: $(STAMP)
	$(BIN)/python -m pytest $(XDIST) -m "not slow" $(PYTEST_ARGS)

test-all: $(STAMP)
	$(BIN)/python -m pytest $(XDIST) $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

# The e2e section beside dj-stripe's webhook view (bench/peer.py), which runs in a virtualenv of its
# own: dj-stripe pins a Stripe library the service does not use. Needs PostgreSQL (BENCH_DATABASE_URL).
PEER_VENV := .venv-peer
PEER_STAMP := $(PEER_VENV)/.installed

$(PEER_STAMP): bench/peer-requirements.lock
	test -x $(PEER_VENV)/bin/python || $(PYTHON) -m venv $(PEER_VENV)
	$(PEER_VENV)/bin/python -m pip install --quiet --require-hashes -r bench/peer-requirements.lock
	touch $@

bench-peer: $(STAMP) $(PEER_STAMP)
	BENCH_PEER_PYTHON=$(PEER_VENV)/bin/python $(BIN)/python -m bench --only e2e,peer $(BENCH_ARGS)

# Re-pin the dependencies (needs network): edit requirements*.in, then `make lock`.
lock:
	$(PYTHON) -m venv /tmp/dunning-lock && /tmp/dunning-lock/bin/pip install --quiet pip-tools
	/tmp/dunning-lock/bin/pip-compile --quiet --strip-extras --generate-hashes -o requirements.lock requirements.in
	/tmp/dunning-lock/bin/pip-compile --quiet --strip-extras --generate-hashes -o requirements-dev.lock requirements-dev.in
	/tmp/dunning-lock/bin/pip-compile --quiet --strip-extras --generate-hashes -o bench/peer-requirements.lock bench/peer-requirements.in

# Email strings (babel.cfg): extract worker/delivery/locale/emails.pot and merge it into every catalogue
# (worker/delivery/locale/<locale>/LC_MESSAGES/emails.po); translate the new or fuzzy entries, then `make test`.
messages: $(STAMP)
	$(BIN)/pybabel extract -F babel.cfg -k N_ -k _ --no-location --sort-output --omit-header \
		-o worker/delivery/locale/emails.pot .
	$(BIN)/pybabel update -i worker/delivery/locale/emails.pot -d worker/delivery/locale -D emails \
		--ignore-obsolete --width 100

clean:
	rm -rf $(VENV) $(PEER_VENV) var .pytest_cache
