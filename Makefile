# nasboard: `make run` starts the platform, `make test` runs the whole test suite (both set themselves up).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.requirements-installed

.PHONY: run test worker setup system-deps migrate clean

$(STAMP): requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	@touch $(STAMP)

setup: $(STAMP)

# Graphviz draws architecture diagrams; Chromium runs the browser tests. Installed with apt when possible.
system-deps:
	@scripts/system-deps.sh graphviz

migrate: setup
	DEBUG=$${DEBUG:-1} $(PY) manage.py migrate --noinput

run: setup
	@scripts/system-deps.sh graphviz || true
	@scripts/run.sh

# One Celery worker per GPU (or one CPU worker); its settings are at the top of scripts/worker.sh. `exec`, so
# that a SIGTERM make forwards reaches the script rather than the shell around it.
worker: setup
	DEBUG=$${DEBUG:-1} NAS_PYTHON=$(PY) exec scripts/worker.sh

test: setup
	@scripts/system-deps.sh graphviz chromium
	@redis_pid=$$(scripts/ensure-redis.sh) && rc=0 && $(PY) -m pytest $(PYTEST_ARGS) || rc=$$?; \
	  [ -z "$$redis_pid" ] || kill $$redis_pid; exit $$rc

clean:
	rm -rf var/test-db.sqlite3* .pytest_cache .hypothesis
