# Every target that runs code first makes sure .venv exists, is installed and has the
# generated code, so `make run` and `make test` work on a fresh clone.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
PROTO := protos/quota_authority/v1/quota_authority.proto
# The Python client distribution (clients/python): QuotaClient and the generated stubs the
# server uses too.
PY_CLIENT := clients/python
GENERATED := $(PY_CLIENT)/src/quota_authority/v1/quota_authority_pb2.py
STAMP := $(VENV)/.installed
DEV_LOCK := requirements/dev.lock
SERVICE_LOCK := requirements/service.lock
CLIENT_LOCK := $(PY_CLIENT)/requirements.lock

.PHONY: run test lint proto proto-lint install lock clean bench bench-peers soak reliability clients interop docs \
	citus citus-stop test-citus chart image test-image alerts schema schema-check

run: $(GENERATED)
	$(BIN)/quota-authority serve

test: $(GENERATED)
	$(BIN)/pytest

# ghz, the load generator of make bench, make soak and the reliability run's soak.
GHZ := .bench/bin/ghz
GHZ_VERSION := v0.121.0
# The soak's short version (scripts/soak.py; make soak runs the long one).
RELIABILITY_SOAK_MINUTES := 3

# The reliability suite at full size (about 20 minutes), then on Citus (about 15 more);
# `make test` runs it small.
# Each test prints its figure; the table in RELIABILITY.md is rewritten from them.
# Then, on a fresh distributed database of the local Citus cluster, the cluster's own faults
# (a worker stopped, the coordinator restarted, a shard moved under load) and the hot-row
# hammer and the retry storm, without and with holds (R16).
CITUS_RELIABILITY := tests/test_reliability_citus.py tests/test_reliability_shard_move.py \
	tests/test_reliability_hammer.py tests/test_reliability_retry_storm.py \
	tests/test_reliability_holds.py

reliability: $(GENERATED) $(GHZ)
	rm -f .reliability/results.jsonl
	QUOTA_AUTHORITY_RELIABILITY=full $(BIN)/pytest -m reliability -s -q
	$(BIN)/python scripts/soak.py --minutes $(RELIABILITY_SOAK_MINUTES) --record
	@scripts/citus.sh start >/dev/null
	url=$$(scripts/citus.sh createdb quota_authority_reliability) && \
	QUOTA_AUTHORITY_DATABASE_URL=$$url \
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
	url=$$(scripts/citus.sh createdb quota_authority_test) && \
	QUOTA_AUTHORITY_DATABASE_URL=$$url \
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
# DATABASE=citus measures the Citus scenarios too; with WORKERS=1 first on one worker, then
# after the second is added and the shards rebalanced (BENCHMARKS.md, How the cluster grows).
bench: $(GENERATED) $(GHZ)
	$(BIN)/python scripts/bench.py $(if $(DATABASE),--database $(DATABASE)) \
		$(if $(WORKERS),--citus-workers $(WORKERS)) $(SCENARIOS)

# Our spread and hot_seller beside the two peers only (scripts/peers.py builds them, pinned,
# where missing); a full `make bench` runs them too.
bench-peers: $(GENERATED) $(GHZ)
	$(BIN)/python scripts/bench.py spread hot_seller peers

# One server under the mixed load at 0.7 × the calls a second spread reaches in the same run,
# for SOAK_MINUTES: memory, descriptors, the pool, p99, errors and the storage upkeep rounds
# watched and asserted (scripts/soak.py; RELIABILITY.md, Soak). Not in .ci/run.
SOAK_MINUTES ?= 30

soak: $(GENERATED) $(GHZ)
	$(BIN)/python scripts/soak.py --minutes $(SOAK_MINUTES)

$(GHZ):
	mkdir -p .bench/bin
	GOBIN=$(CURDIR)/.bench/bin go install github.com/bojand/ghz/cmd/ghz@$(GHZ_VERSION)

# go-client-check (clients/go/client.mk): the committed Go code is what the proto generates;
# schema-check: the committed schema.sql is what the migrations make.
# mypy's configuration (pyproject.toml) names the two roots of the quota_authority namespace
# package as its bases; the scripts, which import each other from scripts/, take theirs from
# where they are (--no-explicit-package-bases), and the client's interop scenario is checked
# apart, its module name (interop) being a script's too.
lint: $(GENERATED) proto-lint go-client-check schema-check
	$(BIN)/ruff check src tests scripts $(PY_CLIENT)
	$(BIN)/ruff format --check src tests scripts $(PY_CLIENT)
	$(BIN)/mypy
	$(BIN)/mypy --no-explicit-package-bases scripts/bench.py scripts/baseline_server.py \
		scripts/reliability_report.py scripts/interop.py scripts/api_reference.py scripts/peers.py \
		scripts/readme_output.py scripts/lock_subset.py scripts/otlp_sink.py scripts/schema.py \
		scripts/bench_http.py scripts/soak.py
	$(BIN)/mypy $(PY_CLIENT)/tests/interop.py

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
# The Python client's wheel (clients/python/client.mk) holds the stubs `make proto` generates.
-include clients/go/client.mk
-include clients/typescript/client.mk
-include clients/python/client.mk

clients: go-client ts-client py-client

# The three clients' interop tests against a freshly started server on a fresh embedded
# database, the Python one from a virtual environment with only the client's wheel installed;
# then the Go and TypeScript READMEs' printed output against what that server answers.
interop: $(GENERATED) clients
	$(BIN)/python scripts/interop.py go-interop ts-interop py-interop go-readme ts-readme

# The Helm chart's checks (tests/test_chart.py, marker chart, which make test leaves out):
# helm lint --strict and helm template over deploy/helm/quota-authority/ci/*.yaml, each
# rendered object checked against the Kubernetes schemas kubernetes-validate bundles, and
# what the objects promise. No cluster. helm comes from the Go module proxy, pinned, into
# .tools/bin (about three minutes to build once).
HELM := .tools/bin/helm
HELM_VERSION := v3.21.4
# Stamped in as helm's own release build does: its version, and the Kubernetes it assumes
# without --kube-version, that of its client-go (v0.36): 1.20 otherwise, which the chart's
# kubeVersion refuses. The checks pass --kube-version themselves.
HELM_LDFLAGS := -X helm.sh/helm/v3/internal/version.version=$(HELM_VERSION) \
	$(foreach pkg,lint/rules chartutil,-X helm.sh/helm/v3/pkg/$(pkg).k8sVersionMajor=1 \
		-X helm.sh/helm/v3/pkg/$(pkg).k8sVersionMinor=36)

chart: $(GENERATED) $(HELM)
	$(BIN)/pytest -m chart tests/test_chart.py

$(HELM):
	GOBIN=$(CURDIR)/.tools/bin go install -ldflags "$(HELM_LDFLAGS)" \
		helm.sh/helm/v3/cmd/helm@$(HELM_VERSION)

# The alerting rules (deploy/prometheus): promtool check rules, then promtool's unit tests
# (deploy/prometheus/tests), in which every alert fires on one series and keeps quiet on
# another (tests/test_monitoring.py checks that every alert has both). promtool comes from
# the Go module proxy, pinned, into .tools/bin: about six and a half minutes to download and
# build once on two busy cores; the checks take under a second.
PROMTOOL := .tools/bin/promtool
PROMTOOL_VERSION := v0.316.0
ALERT_RULES := deploy/prometheus/quota-authority.rules.yaml

alerts: $(PROMTOOL)
	$(PROMTOOL) check rules $(ALERT_RULES)
	$(PROMTOOL) test rules deploy/prometheus/tests/*.yaml

$(PROMTOOL):
	GOBIN=$(CURDIR)/.tools/bin go install \
		github.com/prometheus/prometheus/cmd/promtool@$(PROMTOOL_VERSION)

# The SQL the database runs, readable in one file: the schema the migrations make (tables with
# their columns, constraints, indexes and partitions; every function whole), read back from
# the catalogs of a fresh embedded PostgreSQL migrated to head (scripts/schema.py). Run
# `make schema` after adding a migration and commit the file with it; tests/test_schema.py
# (make test) and schema-check (make lint) fail while it is stale.
SCHEMA_SQL := src/quota_authority/store/schema.sql

schema: $(GENERATED)
	$(BIN)/python scripts/schema.py

schema-check: $(GENERATED)
	$(BIN)/python scripts/schema.py --check $(SCHEMA_SQL)

# The API reference, generated from the proto's comments; tests/test_docs.py checks it.
docs: $(STAMP)
	$(BIN)/python scripts/api_reference.py > docs/api.md

install: $(STAMP)

# Every install comes from the lock files (requirements/), each package pinned with its hashes,
# so a fresh machine next month runs what was tested. The project goes in last, built with the
# locked setuptools and nothing fetched beside it (--no-deps --no-build-isolation): the client
# distribution (clients/python) and the server, which depends on it, both editable, so pip
# check finds the server's quota-authority-client requirement met by the local one.
$(STAMP): pyproject.toml $(PY_CLIENT)/pyproject.toml $(DEV_LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps -r $(DEV_LOCK)
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e $(PY_CLIENT) -e .
	$(BIN)/python -m pip check
	touch $(STAMP)

# The one target that refreshes the lock files from pyproject.toml's ranges (and
# requirements/build.in): the development set, then the service's own and the Python
# client's (clients/python/requirements.lock), both held to the development set's versions.
# A package already locked keeps its version; `make lock UPGRADE=1` moves each to its newest.
# The server's quota-authority-client is the local clients/python: requirements/local.in
# names it, so uv takes it from there, never from an index, and it is left out of the locks
# (it is installed from the tree).
# uv, pinned, installs itself into .tools. Commit the lock files with what changed.
UV := .tools/uv/bin/uv
UV_VERSION := 0.13.10
LOCK_FLAGS := --quiet --universal --python-version 3.11 --generate-hashes \
	--custom-compile-command 'make lock'
LOCAL_PACKAGES := requirements/local.in
SERVER_LOCK_FLAGS := $(LOCK_FLAGS) --no-emit-package quota-authority-client

lock: $(UV)
	$(UV) pip compile $(SERVER_LOCK_FLAGS) $(if $(UPGRADE),--upgrade) --extra dev \
		pyproject.toml requirements/build.in $(LOCAL_PACKAGES) -o $(DEV_LOCK)
	$(UV) pip compile $(SERVER_LOCK_FLAGS) pyproject.toml requirements/build.in \
		$(LOCAL_PACKAGES) -c $(DEV_LOCK) -o $(SERVICE_LOCK)
	$(UV) pip compile $(LOCK_FLAGS) $(PY_CLIENT)/pyproject.toml -c $(DEV_LOCK) -o $(CLIENT_LOCK)

$(UV):
	$(PYTHON) -m venv .tools/uv
	.tools/uv/bin/python -m pip install --quiet uv==$(UV_VERSION)

# The one target that generates code: Python messages, gRPC stubs and their type stubs, into
# the client distribution (quota_authority.v1), which the server imports them from. Stubs
# generated into src/quota_authority/v1 before they moved are removed, so no checkout keeps a
# second copy.
proto: $(STAMP)
	rm -rf src/quota_authority/v1
	$(BIN)/python -m grpc_tools.protoc -I protos \
		--plugin=protoc-gen-mypy=$(BIN)/protoc-gen-mypy \
		--plugin=protoc-gen-mypy_grpc=$(BIN)/protoc-gen-mypy_grpc \
		--python_out=$(PY_CLIENT)/src --grpc_python_out=$(PY_CLIENT)/src \
		--mypy_out=$(PY_CLIENT)/src --mypy_grpc_out=$(PY_CLIENT)/src \
		$(PROTO)

$(GENERATED): $(PROTO) $(STAMP)
	$(MAKE) proto

# The Python and TypeScript generated code goes; the Go client's clients/go/gen is committed
# and stays.
clean: ts-clean py-clean
	rm -rf $(VENV) .tools .pytest_cache .mypy_cache .ruff_cache src/*.egg-info
	rm -f $(PY_CLIENT)/src/quota_authority/v1/*_pb2*.py $(PY_CLIENT)/src/quota_authority/v1/*_pb2*.pyi
