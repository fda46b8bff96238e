# The two commands: `make serve` and `make test`. Everything else is a step of theirs.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: serve test install generate check-generated lint typecheck lock clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# Third-party packages come from the hashed lock; the two local packages without deps.
$(STAMP): $(PY) requirements/dev.lock pyproject.toml clients/python/pyproject.toml
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	$(PY) -m pip install --quiet --require-hashes -r requirements/dev.lock
	$(PY) -m pip install --quiet --no-deps -e ./clients/python -e .
	touch $(STAMP)

install: $(STAMP)

serve: $(STAMP)
	$(PY) -m service serve --embedded

test: $(STAMP)
	$(PY) scripts/gen_protos.py --check
	$(VENV)/bin/buf lint
	$(PY) -m ruff check .
	$(PY) -m ruff format --check service tests scripts
	$(PY) -m mypy
	scripts/with_redis.sh $(PY) -m pytest -q

generate: $(STAMP)
	$(PY) scripts/gen_protos.py

lock: $(PY)
	$(PY) -m pip install --quiet pip-tools
	cd requirements && ../$(VENV)/bin/pip-compile --quiet --generate-hashes --allow-unsafe \
	  --strip-extras --no-emit-index-url --no-emit-find-links -o dev.lock dev.in

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
