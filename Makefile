# Every target that runs code first makes sure .venv exists, is installed and has the
# generated code, so `make run` and `make test` work on a fresh clone.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
PROTO := protos/quota_authority/v1/quota_authority.proto
GENERATED := src/quota_authority/v1/quota_authority_pb2.py
STAMP := $(VENV)/.installed
DEV_LOCK := requirements/dev.lock
SERVICE_LOCK := requirements/service.lock

.PHONY: run test lint proto proto-lint install lock clean bench bench-peers reliability clients interop docs \
	citus citus-stop test-citus image test-image

run: $(GENERATED)
	$(BIN)/quota-authority serve

test: $(GENERATED)
	$(BIN)/pytest

# The reliability suite at full size (about 20 minutes), then on Citus (about 15 more);
# `make test` runs it small.
# Each test prints its figure; the table in RELIABILITY.md is rewritten from them.
# Then, on a fresh distributed database of the local Citus cluster, the cluster's own faults
# (a worker stopped, the coordinator restarted) and the hot-row hammer and the retry storm.
CITUS_RELIABILITY := tests/test_reliability_citus.py tests/test_reliability_hammer.py \
	tests/test_reliability_retry_storm.py

reliability: $(GENERATED)
	rm -f .reliability/results.jsonl
	QUOTA_AUTHORITY_RELIABILITY=full $(BIN)/pytest -m reliability -s -q
	@scripts/citus.sh start >/dev/null
	QUOTA_AUTHORITY_DATABASE_URL=$$(scripts/citus.sh createdb quota_authority_reliability) \
		QUOTA_AUTHORITY_DISTRIBUTE=true QUOTA_AUTHORITY_RELIABILITY=full \
		$(BIN)/pytest -m reliability -s -q $(CITUS_RELIABILITY)
	$(BIN)/python scripts/reliability_report.py

# A local Citus cluster (coordinator and two workers on loopback, data in .citus/), Citus
# built from shared/vendor where it is missing; scripts/citus.sh says how. `make citus`
# prints the URL of its quota_authority database; a second `make citus` reuses it.
citus:
	@scripts/citus.sh start

citus-stop:
	@scripts/citus.sh stop

# The whole suite against a fresh database on the local Citus cluster, distributed by
# seller_id (QUOTA_AUTHORITY_DISTRIBUTE), as on a deployment that outgrew one PostgreSQL.
test-citus: $(GENERATED)
	@scripts/citus.sh start >/dev/null
	QUOTA_AUTHORITY_DATABASE_URL=$$(scripts/citus.sh createdb quota_authority_test) \
		QUOTA_AUTHORITY_DISTRIBUTE=true $(BIN)/pytest $(PYTEST_ARGS)

# The container image (Containerfile) with podman, and the same without the embedded
# PostgreSQL: scripts/image.sh installs podman, runc (and mmdebstrap) where missing, and makes
# the base from Debian's packages when the official Python image cannot be pulled.
# BASE=... builds on another base. Layers are cached: a second `make image` takes seconds.
image:
	scripts/image.sh build

# The image in the real container runtime (tests/test_image.py, marked `image`): health,
# a call, migrate as a one-off container against a PostgreSQL on the host, SIGTERM, a read-only
# root as non-root, a restart on the same volume; it prints the sizes and run-to-SERVING times.
test-image: $(GENERATED) image
	$(BIN)/pytest -m image -s -v tests/test_image.py

# Load tests with ghz against a baseline measured in the same run; see BENCHMARKS.md.
GHZ := .bench/bin/ghz
GHZ_VERSION := v0.121.0

bench: $(GENERATED) $(GHZ)
	$(BIN)/python scripts/bench.py $(if $(DATABASE),--database $(DATABASE)) $(SCENARIOS)

# Our spread and hot_seller beside the two peers only (scripts/peers.py builds them, pinned,
# where missing); a full `make bench` runs them too.
bench-peers: $(GENERATED) $(GHZ)
	$(BIN)/python scripts/bench.py spread hot_seller peers

$(GHZ):
	mkdir -p .bench/bin
	GOBIN=$(CURDIR)/.bench/bin go install github.com/bojand/ghz/cmd/ghz@$(GHZ_VERSION)

# go-client-check (clients/go/client.mk): the committed Go code is what the proto generates.
lint: $(GENERATED) proto-lint go-client-check
	$(BIN)/ruff check src tests scripts
	$(BIN)/ruff format --check src tests scripts
	$(BIN)/mypy
	$(BIN)/mypy scripts/bench.py scripts/baseline_server.py scripts/reliability_report.py \
		scripts/interop.py scripts/api_reference.py scripts/peers.py scripts/lock_subset.py

# The proto against Buf's STANDARD lint rules, and for breaking changes (buf.yaml) against
# the proto callers may have generated clients from (scripts/buf_breaking.sh says which).
# buf comes from npm, pinned, into .tools.
BUF := .tools/node_modules/.bin/buf
BUF_VERSION := 1.75.0

proto-lint: $(BUF)
	$(BUF) lint
	scripts/buf_breaking.sh $(BUF)

$(BUF):
	npm install --silent --no-audit --no-fund --prefix .tools @bufbuild/buf@$(BUF_VERSION)

# Clients in other languages, generated from the proto by buf (each directory's
# buf.gen.yaml) with pinned plugins; see clients/go/README.md, clients/typescript/README.md.
# The Go module's generated code is committed (so `go get` works), the TypeScript client's is not.
-include clients/go/client.mk
-include clients/typescript/client.mk

clients: go-client ts-client

# Both clients' interop tests against a freshly started server on a fresh embedded database.
interop: $(GENERATED) clients
	$(BIN)/python scripts/interop.py go-interop ts-interop

# The API reference, generated from the proto's comments; tests/test_docs.py checks it.
docs: $(STAMP)
	$(BIN)/python scripts/api_reference.py > docs/api.md

install: $(STAMP)

# Every install comes from the lock files (requirements/), each package pinned with its hashes,
# so a fresh machine next month runs what was tested. The project itself goes in last, built
# with the locked setuptools and nothing fetched beside it (--no-deps --no-build-isolation).
$(STAMP): pyproject.toml $(DEV_LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps -r $(DEV_LOCK)
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/python -m pip check
	touch $(STAMP)

# The one target that refreshes the lock files from pyproject.toml's ranges (and
# requirements/build.in): the development set, then the service's own, held to the same versions.
# A package already locked keeps its version; `make lock UPGRADE=1` moves each to its newest.
# uv, pinned, installs itself into .tools. Commit the lock files with what changed.
UV := .tools/uv/bin/uv
UV_VERSION := 0.13.10
LOCK_FLAGS := --quiet --universal --python-version 3.11 --generate-hashes \
	--custom-compile-command 'make lock'

lock: $(UV)
	$(UV) pip compile $(LOCK_FLAGS) $(if $(UPGRADE),--upgrade) --extra dev \
		pyproject.toml requirements/build.in -o $(DEV_LOCK)
	$(UV) pip compile $(LOCK_FLAGS) pyproject.toml requirements/build.in -c $(DEV_LOCK) \
		-o $(SERVICE_LOCK)

$(UV):
	$(PYTHON) -m venv .tools/uv
	.tools/uv/bin/python -m pip install --quiet uv==$(UV_VERSION)

# The one target that generates code: Python messages, gRPC stubs and their type stubs.
proto: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -I protos \
		--plugin=protoc-gen-mypy=$(BIN)/protoc-gen-mypy \
		--plugin=protoc-gen-mypy_grpc=$(BIN)/protoc-gen-mypy_grpc \
		--python_out=src --grpc_python_out=src \
		--mypy_out=src --mypy_grpc_out=src \
		$(PROTO)

$(GENERATED): $(PROTO) $(STAMP)
	$(MAKE) proto

# The Python and TypeScript generated code goes; the Go client's clients/go/gen is committed
# and stays.
clean: ts-clean
	rm -rf $(VENV) .tools .pytest_cache .mypy_cache .ruff_cache src/*.egg-info
	rm -f src/quota_authority/v1/*_pb2*.py src/quota_authority/v1/*_pb2*.pyi
