# LingoLoop: `make run` to use it, `make test` to check it.
#
# Both install from requirements.lock: every package pinned, with its hashes, resolved for
# Python 3.11, 3.12 and 3.13, so a fresh machine gets what CI tested. `make lock` re-resolves
# it after a change to pyproject.toml (`make lock UPGRADE=1`: the newest versions allowed).
#
# PYTHON=  the interpreter for a new virtual environment; by default the newest that runs
#          of python3.13, python3.12, python3.11 (then python3, if it is one of those).
# VENV=    where the virtual environment lives (default .venv; CI uses .venv-3.12 and so on).

VENV ?= .venv
LOCK := requirements.lock
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SUPPORTED := 3.11, 3.12 or 3.13
# Exits 0 for a supported Python, 1 for another one, 127 when it does not run at all.
IS_SUPPORTED := -c 'import sys; sys.exit(not (3, 11) <= sys.version_info[:2] <= (3, 13))'
MINOR := -c 'import sys; print("%d.%d" % sys.version_info[:2])'
# uv resolves the lock (pip installs it): one pinned version, so `make lock` is repeatable.
UV_VERSION := 0.13.9

.PHONY: run test lint format lock venv clean

$(PY):
	@py=""; \
	for candidate in $(or $(PYTHON),python3.13 python3.12 python3.11 python3); do \
	  if "$$candidate" $(IS_SUPPORTED) >/dev/null 2>&1; then py="$$candidate"; break; fi; \
	done; \
	if [ -z "$$py" ]; then \
	  if [ -n "$(PYTHON)" ]; then \
	    found=$$("$(PYTHON)" $(MINOR) 2>/dev/null || echo "not a Python that runs here"); \
	    echo "PYTHON=$(PYTHON) is $$found; LingoLoop needs Python $(SUPPORTED)." >&2; \
	  else \
	    echo "LingoLoop needs Python $(SUPPORTED); none of python3.13, python3.12," \
	      "python3.11 (or python3 as one of them) runs here." >&2; \
	  fi; \
	  echo "Install one, or name it: make $(or $(MAKECMDGOALS),run) PYTHON=/path/to/python3.12" >&2; \
	  exit 1; \
	fi; \
	echo "== creating $(VENV) with $$py (Python $$("$$py" $(MINOR)))"; \
	"$$py" -m venv $(VENV)

$(STAMP): $(LOCK) pyproject.toml | $(PY)
	@echo "== installing $(LOCK) into $(VENV)"
	$(PY) -m pip install --quiet --require-hashes --no-deps -r $(LOCK)
	@# The filter hides setuptools' notice that every editable install of a flat layout prints.
	PYTHONWARNINGS="ignore:Editable installation" \
	  $(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	@$(PY) -m pip check >/dev/null || { $(PY) -m pip check; \
	  echo "$(LOCK) does not fit pyproject.toml: run \`make lock\`." >&2; exit 1; }
	touch $(STAMP)

# An explicit PYTHON= must not be quietly ignored because $(VENV) was made with another one.
venv: $(STAMP)
	@if [ -n "$(PYTHON)" ]; then \
	  want=$$("$(PYTHON)" $(MINOR)); have=$$($(PY) $(MINOR)); \
	  if [ "$$want" != "$$have" ]; then \
	    echo "$(VENV) has Python $$have, not $(PYTHON) ($$want): \`make clean\` first," \
	      "or give it its own folder: make $(MAKECMDGOALS) PYTHON=$(PYTHON) VENV=.venv-$$want" >&2; \
	    exit 1; \
	  fi; \
	fi

run: venv
	$(PY) manage.py migrate --noinput
	$(PY) manage.py collectstatic --noinput --verbosity 0
	$(PY) manage.py ensure_admin
	$(PY) manage.py serve

# pytest's exit 5 (no test collected) fails too, and says so: a run that tests nothing is no pass.
# TEST_WORKERS pytest processes share the tests out a file at a time (pytest-xdist); each has its
# own test database and Redis database (tests/conftest.py). TEST_WORKERS=0: one process, no xdist.
TEST_WORKERS ?= 2
test: venv
	@$(VENV)/bin/pytest $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile) \
	  $(PYTEST_ARGS); status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest ran no test: check PYTEST_ARGS" >&2; fi; \
	exit $$status

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy lingoloop transcription tasks_admin webhooks

format: venv
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# pip and setuptools are locked too: they install the lock and build the editable install.
lock: | $(PY)
	$(PY) -m pip install --quiet "uv==$(UV_VERSION)"
	printf '%s\n' 'pip>=25' 'setuptools>=77' | $(VENV)/bin/uv pip compile \
	  --python $(PY) --universal --python-version 3.11 --all-extras --generate-hashes \
	  --custom-compile-command "make lock" $(if $(UPGRADE),--upgrade) --quiet \
	  --output-file $(LOCK) pyproject.toml -

clean:
	rm -rf $(VENV) .venv-3.* .pytest_cache .mypy_cache .ruff_cache test-artifacts build
