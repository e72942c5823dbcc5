# Two commands on a fresh machine: `make demo` and `make test`. Both install first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
# Flower pins fastapi, starlette, uvicorn, typer and rich below the versions the server
# needs, so the Flower integration (clients/flower, tests/flower, bench/flower.py) has
# its own environment: the project without torch, plus the flower extra.
FLOWER_VENV  := .venv-flower
FLOWER_PY    := $(FLOWER_VENV)/bin/python
FLOWER_STAMP := $(FLOWER_VENV)/.installed

.PHONY: install install-server lock test check bench demo clean

install: $(STAMP) $(FLOWER_STAMP)

# Idempotent: re-runs only when the project's dependency list or pins change.
# torch is pinned by constraints.txt to the local CPU wheel and installed in the same
# pip run as opacus, so pip never reaches for a CUDA build.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c constraints.txt -e '.[all,dev]'
	touch $(STAMP)

$(FLOWER_STAMP): pyproject.toml constraints.txt
	test -x $(FLOWER_PY) || $(PYTHON) -m venv $(FLOWER_VENV)
	$(FLOWER_PY) -m pip install --quiet --upgrade pip
	$(FLOWER_PY) -m pip install --quiet -c constraints.txt -e '.[flower,dev]'
	touch $(FLOWER_STAMP)

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
	$(FLOWER_VENV)/bin/mypy clients/flower
	$(VENV)/bin/lint-imports

# The Flower tests run in Flower's environment (in the main one they skip, saying so).
test: check
	$(PY) -m pytest -q
	$(FLOWER_PY) -m pytest -q tests/flower

bench: install
	$(PY) -m bench

demo: install
	$(VENV)/bin/secagg demo

clean:
	rm -rf $(VENV) $(FLOWER_VENV) .pytest_cache .hypothesis
