# The two commands: `make run` (embedded default on :6027) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
MANAGE := $(PY) manage.py

.PHONY: run test test-postgres lint smoke token worker clean

# (Re)creates the virtualenv when requirements.txt changes; does nothing else.
$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

.venv: $(VENV)/.installed

run: $(VENV)/.installed
	$(MANAGE) migrate --noinput
	$(MANAGE) collectstatic --noinput --verbosity 0
	@$(MANAGE) print_welcome
	BACKUP_STEP_DELAY=$${BACKUP_STEP_DELAY:-1} $(MANAGE) serve

test: $(VENV)/.installed
	$(PY) -m pytest -q

# The in-process tests again on production's stores (server-process tests bring their own SQLite).
PG_URL ?= postgres://postgres@127.0.0.1:5432/backup_service_ci
TEST_REDIS_URL ?= redis://127.0.0.1:6379/3
test-postgres: $(VENV)/.installed
	DATABASE_URL=$(PG_URL) REDIS_URL=$(TEST_REDIS_URL) $(PY) -m pytest -q -m "not slow and not browser"

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(MANAGE) spectacular --validate --fail-on-warn --file /dev/null

smoke: $(VENV)/.installed
	$(PY) ../shared/contract-smoke.py

token: $(VENV)/.installed
	@$(MANAGE) create_admin_token $${USER_ID:-admin} --ttl $${TTL:-86400}

worker: $(VENV)/.installed
	$(MANAGE) backup_worker

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
