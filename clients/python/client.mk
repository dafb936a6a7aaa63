# The Python client (clients/python/README.md), included from the root Makefile, so paths
# are relative to the repository root. Its stubs are the ones `make proto` generates into
# clients/python/src/quota_authority/v1, which the server imports too.
#   make py-client    its wheel, in clients/python/dist (built with .venv's locked
#                     setuptools, nothing fetched)
#   make py-clean     removes the wheel and its build directory
PY_CLIENT_DIST := $(PY_CLIENT)/dist
PY_CLIENT_WHEEL := $(PY_CLIENT_DIST)/.built
PY_CLIENT_SOURCES := $(PY_CLIENT)/pyproject.toml $(PY_CLIENT)/README.md \
	$(wildcard $(PY_CLIENT)/src/quota_authority/*/*.py $(PY_CLIENT)/src/quota_authority/*/py.typed)

.PHONY: py-client py-clean

py-client: $(PY_CLIENT_WHEEL)

# The build directory goes first: setuptools would otherwise ship a module since deleted.
$(PY_CLIENT_WHEEL): $(GENERATED) $(PY_CLIENT_SOURCES)
	rm -rf $(PY_CLIENT_DIST) $(PY_CLIENT)/build
	$(BIN)/python -m pip wheel --quiet --no-deps --no-build-isolation -w $(PY_CLIENT_DIST) $(PY_CLIENT)
	touch $@

py-clean:
	rm -rf $(PY_CLIENT_DIST) $(PY_CLIENT)/build $(PY_CLIENT)/src/*.egg-info
