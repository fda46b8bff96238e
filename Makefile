# The two commands: `make serve` and `make test`. Everything else is a step of theirs.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# `make serve`'s smaller install (serve.lock) into the same .venv: its pins are dev.lock's,
# so the dev install is a superset and either target may run first.
SERVE_STAMP := $(VENV)/.installed-serve
TS_DIR := clients/typescript
TS_STAMP := $(TS_DIR)/node_modules/.installed
# The Python code generator's own pinned environment: the oldest grpcio-tools the client's
# ranges allow (requirements/protoc.in says why), apart from the dev venv's current grpcio.
PROTOC_VENV  := .venv-protoc
PROTOC_STAMP := $(PROTOC_VENV)/.installed
# The image of the last released contract: `buf breaking` compares proto/ with it.
RELEASED := proto/released/registry.binpb

.PHONY: serve test install generate check-generated lint typecheck lock clean \
	ts-deps ts go-deps breaking release-contract protoc-deps compat

$(PY):
	$(PYTHON) -m venv $(VENV)

# Third-party packages come from the hashed lock; the two local packages without deps (so
# nothing unhashed slips in). The server needs no client (it has its own generated code in
# service/gen/); the client is installed for the tests that call it.
$(STAMP): $(PY) requirements/dev.lock pyproject.toml clients/python/pyproject.toml
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	$(PY) -m pip install --quiet --require-hashes -r requirements/dev.lock
	$(PY) -m pip install --quiet --no-deps -e ./clients/python -e .
	touch $(STAMP)

install: $(STAMP)

# Made anew whenever its lock changes, so nothing of an older generator lingers in it.
$(PROTOC_STAMP): requirements/protoc.lock
	rm -rf $(PROTOC_VENV)
	$(PYTHON) -m venv $(PROTOC_VENV)
	$(PROTOC_VENV)/bin/python -m pip install --quiet --disable-pip-version-check --no-compile \
	  --require-hashes -r requirements/protoc.lock
	touch $(PROTOC_STAMP)

protoc-deps: $(PROTOC_STAMP)

# The TypeScript client's tools (protoc-gen-es, tsc) from its committed lock. A failing
# `npm ci` (no Node.js 20+, registry unreachable) fails `make test`: there is no skipping.
$(TS_STAMP): $(TS_DIR)/package.json $(TS_DIR)/package-lock.json
	cd $(TS_DIR) && npm ci --no-audit --no-fund --loglevel=error
	touch $(TS_STAMP)

ts-deps: $(TS_STAMP)

# Type-check and compile the TypeScript client: the package into dist/, with its example and test into build/.
ts: $(TS_STAMP)
	cd $(TS_DIR) && npm run --silent build

# Debian's Go toolchain, protoc plugins and Go sources: clients/go is generated and built
# offline (GOPATH mode), so they come from apt, not the module proxy. Quick when present.
go-deps:
	scripts/go_toolchain.sh

breaking: $(STAMP)
	$(VENV)/bin/buf breaking --against $(RELEASED)

# Only on a release: the contract as it is now becomes the one `breaking` protects.
release-contract: $(STAMP)
	$(VENV)/bin/buf build --exclude-source-info -o $(RELEASED)

# Only what serving needs (runtime + moto + grpcurl), hash-checked; skipped when the dev
# install is current (it holds the same pins and more). uv (pinned and hashed in
# installer.lock, installed by pip) installs serve.lock: ~1 s from a warm cache where pip
# takes ~15 s, most of the time to the first answer (requirements/installer.in).
$(SERVE_STAMP): $(PY) requirements/serve.lock requirements/installer.lock pyproject.toml
	@if [ -f $(STAMP) ] && [ $(STAMP) -nt requirements/dev.lock ] && \
	    [ $(STAMP) -nt pyproject.toml ]; then \
	  echo "serve: the dev install in $(VENV) is current and holds serve.lock"; \
	else \
	  $(PY) -m pip install --quiet --disable-pip-version-check --no-compile --no-deps \
	    --require-hashes -r requirements/installer.lock && \
	  $(VENV)/bin/uv pip install --quiet --python $(PY) --no-deps --require-hashes \
	    -r requirements/serve.lock && \
	  $(VENV)/bin/uv pip install --quiet --python $(PY) --no-deps --no-build-isolation -e . ; \
	fi
	touch $(SERVE_STAMP)

serve: $(SERVE_STAMP)
	$(PY) -m service serve --embedded

# pytest in two processes (pytest-xdist), whole files to each: files are independent (each
# process has its own moto server, gateways take free ports, Redis keys are per test), and a
# file's module fixtures (tsc, the Go build, a wheel) run once, in one process.
test: $(STAMP) $(PROTOC_STAMP) $(TS_STAMP) go-deps
	$(PY) scripts/gen_protos.py --check
	$(PY) scripts/unasync.py --check
	$(VENV)/bin/buf lint
	$(VENV)/bin/buf breaking --against $(RELEASED)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check service tests scripts clients/python/src/registry_gateway_client
	$(PY) -m mypy
	cd $(TS_DIR) && npm run --silent build
	scripts/with_redis.sh $(PY) -m pytest -q -n 2 --dist loadfile

generate: $(STAMP) $(PROTOC_STAMP) $(TS_STAMP) go-deps
	$(PY) scripts/gen_protos.py

# Only the Python client's compatibility step (part of `make test`'s pytest run): the client
# alone in throwaway venvs at the oldest and the newest versions its ranges allow, against a
# live gateway (tests/clients/test_python_client_compat.py).
compat: $(STAMP)
	scripts/with_redis.sh $(PY) -m pytest -q tests/clients/test_python_client_compat.py

lock: $(PY)
	$(PY) -m pip install --quiet pip-tools
	cd requirements && ../$(VENV)/bin/pip-compile --quiet --generate-hashes --allow-unsafe \
	  --strip-extras --no-emit-index-url --no-emit-find-links -o dev.lock dev.in
	cd requirements && ../$(VENV)/bin/pip-compile --quiet --generate-hashes --allow-unsafe \
	  --strip-extras --no-emit-index-url --no-emit-find-links -o runtime.lock runtime.in
	cd requirements && ../$(VENV)/bin/pip-compile --quiet --generate-hashes --allow-unsafe \
	  --strip-extras --no-emit-index-url --no-emit-find-links -o serve.lock serve.in
	cd requirements && ../$(VENV)/bin/pip-compile --quiet --generate-hashes --allow-unsafe \
	  --strip-extras --no-emit-index-url --no-emit-find-links -o protoc.lock protoc.in
	cd requirements && ../$(VENV)/bin/pip-compile --quiet --generate-hashes --allow-unsafe \
	  --strip-extras --no-emit-index-url --no-emit-find-links -o installer.lock installer.in
	cd requirements && ../$(VENV)/bin/pip-compile --quiet --generate-hashes --allow-unsafe \
	  --strip-extras --no-emit-index-url --no-emit-find-links -o client-oldest.lock client-oldest.in
	cd requirements && ../$(VENV)/bin/pip-compile --quiet --generate-hashes --allow-unsafe \
	  --strip-extras --no-emit-index-url --no-emit-find-links --upgrade \
	  -o client-newest.lock client-newest.in

clean:
	rm -rf $(VENV) $(PROTOC_VENV) .venv-tests .mypy_cache .pytest_cache .ruff_cache $(TS_DIR)/node_modules $(TS_DIR)/dist $(TS_DIR)/build

# Minutes of mixed load; also checks memory growth between two windows after warm-up.
.PHONY: soak
soak: $(STAMP)
	REGISTRY_GATEWAY_SOAK_CALLS=20000 scripts/with_redis.sh $(PY) -m pytest -q -p no:logging \
	  tests/e2e/test_soak.py

# Benchmarks (bench/, not part of `make test`): the full run writes bench/results/latest.json,
# docs/performance.md and its chart; the quick one (under a minute) only bench/results/quick.json.
.PHONY: bench bench-quick
bench: $(STAMP)
	scripts/with_redis.sh $(PY) -m bench

bench-quick: $(STAMP)
	scripts/with_redis.sh $(PY) -m bench --quick
