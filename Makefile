# The two commands: `make run` (embedded default on :6027) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
MANAGE := $(PY) manage.py
PIP_INSTALL := $(PY) -m pip install --quiet --disable-pip-version-check

.PHONY: run test test-postgres lint token worker clean

# What the service runs on, (re)installed when requirements.txt changes; `make .venv` does only this.
$(VENV)/.installed: requirements.txt
	@test -x $(PY) || { echo "== creating $(VENV) (Python virtualenv)"; $(PYTHON) -m venv $(VENV); }
	@echo "== installing the service's packages from requirements.txt into $(VENV) (a minute on a first run)"
	@start=$$(date +%s); $(PIP_INSTALL) -r requirements.txt && echo "== installed in $$(( $$(date +%s) - start )) s"
	@touch $@

.venv: $(VENV)/.installed

# Tests and tools on top of it, for `make test` and `make lint` only.
$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.txt
	@echo "== installing the test tools from requirements-dev.txt into $(VENV)"
	@$(PIP_INSTALL) -r requirements-dev.txt
	@touch $@

run: $(VENV)/.installed
	@echo "== applying database migrations"
	@$(MANAGE) migrate --noinput
	@$(MANAGE) collectstatic --noinput --verbosity 0
	@BACKUP_STEP_DELAY=$${BACKUP_STEP_DELAY:-1} ALLOW_DEMO_DUMPS=$${ALLOW_DEMO_DUMPS:-1} $(MANAGE) serve --welcome

test: $(VENV)/.installed-dev
	$(PY) -m pytest -q

# The in-process tests again on production's stores (server-process tests bring their own SQLite).
PG_URL ?= postgres://postgres@127.0.0.1:5432/backup_service_ci
TEST_REDIS_URL ?= redis://127.0.0.1:6379/3
test-postgres: $(VENV)/.installed-dev
	DATABASE_URL=$(PG_URL) REDIS_URL=$(TEST_REDIS_URL) $(PY) -m pytest -q -m "not slow and not browser"

# ruff, the import direction (import-linter contracts in pyproject.toml), the OpenAPI document.
lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports --no-cache
	$(MANAGE) spectacular --validate --fail-on-warn --file /dev/null

token: $(VENV)/.installed
	@$(MANAGE) create_admin_token $${USER_ID:-admin} --ttl $${TTL:-86400}

worker: $(VENV)/.installed
	$(MANAGE) backup_worker

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
