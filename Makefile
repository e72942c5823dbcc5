# Two commands on a fresh machine: `make demo` and `make test`. Both install first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: install install-server lock test check bench demo clean

install: $(STAMP)

# Idempotent: re-runs only when the project's dependency list or pins change.
# torch is pinned by constraints.txt to the local CPU wheel and installed in the same
# pip run as opacus, so pip never reaches for a CUDA build. The flower extra (Flower and
# Ray, for clients/flower and its tests) comes in the same run, under the same pin.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c constraints.txt -e '.[all,flower,dev]'
	touch $(STAMP)

# A server deployment from the hashed lock file: every package pinned and checked against its
# SHA-256 (pip --require-hashes), then the project itself without dependencies. No torch.
SERVER_VENV := .venv-server
install-server:
	test -x $(SERVER_VENV)/bin/python || $(PYTHON) -m venv $(SERVER_VENV)
	$(SERVER_VENV)/bin/python -m pip install --quiet --require-hashes --no-deps -r requirements/server.lock
	$(SERVER_VENV)/bin/python -m pip install --quiet --no-deps .

# Regenerate requirements/server.lock after changing the [server] or [postgres] extras (needs `make install`).
lock: install
	$(VENV)/bin/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url \
		--no-emit-find-links --extra server --extra postgres --output-file requirements/server.lock pyproject.toml

# The gates run before the suite: a lint, format, type or layer violation fails `make test`.
check: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

test: check
	$(PY) -m pytest -q

bench: install
	$(PY) -m bench

demo: install
	$(VENV)/bin/secagg demo

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
