# The Python client (clients/python/README.md), included from the root Makefile, so paths
# are relative to the repository root. Its stubs are the ones `make proto` generates into
# clients/python/src/quota_authority/v1, which the server imports too.
#   make py-client    its wheel, in clients/python/dist (built with .venv's locked
#                     setuptools, nothing fetched)
#   make py-interop   a fresh virtual environment (.tools/pyclient-venv) with only the client:
#                     clients/python/requirements.lock (hashes required) and the wheel;
#                     then clients/python/tests/interop.py against QUOTA_AUTHORITY_TARGET
#                     (make interop starts a server and sets it)
#   make py-clean     removes the wheel and its build directory
PY_CLIENT_DIST := $(PY_CLIENT)/dist
PY_CLIENT_WHEEL := $(PY_CLIENT_DIST)/.built
PY_CLIENT_VENV := .tools/pyclient-venv
PY_CLIENT_SOURCES := $(PY_CLIENT)/pyproject.toml $(PY_CLIENT)/README.md \
	$(wildcard $(PY_CLIENT)/src/quota_authority/*/*.py $(PY_CLIENT)/src/quota_authority/*/py.typed)

.PHONY: py-client py-interop py-clean

py-client: $(PY_CLIENT_WHEEL)

# The build directory goes first: setuptools would otherwise ship a module since deleted.
$(PY_CLIENT_WHEEL): $(GENERATED) $(PY_CLIENT_SOURCES)
	rm -rf $(PY_CLIENT_DIST) $(PY_CLIENT)/build
	$(BIN)/python -m pip wheel --quiet --no-deps --no-build-isolation -w $(PY_CLIENT_DIST) $(PY_CLIENT)
	touch $@

# Without --no-deps, pip refuses a lock that misses a dependency of what it installs; pip
# check then holds the wheel's own requirements to what the lock installed.
py-interop: $(PY_CLIENT_WHEEL)
	rm -rf $(PY_CLIENT_VENV)
	$(BIN)/python -m venv $(PY_CLIENT_VENV)
	$(PY_CLIENT_VENV)/bin/python -m pip install --quiet --disable-pip-version-check \
		--require-hashes -r $(CLIENT_LOCK)
	$(PY_CLIENT_VENV)/bin/python -m pip install --quiet --disable-pip-version-check --no-deps \
		$(PY_CLIENT_DIST)/*.whl
	$(PY_CLIENT_VENV)/bin/python -m pip check
	$(PY_CLIENT_VENV)/bin/python -I $(PY_CLIENT)/tests/interop.py

py-clean:
	rm -rf $(PY_CLIENT_DIST) $(PY_CLIENT)/build $(PY_CLIENT)/src/*.egg-info
