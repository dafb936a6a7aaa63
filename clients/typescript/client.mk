# The TypeScript client (clients/typescript/README.md), included from the root Makefile, so
# paths are relative to the repository root.
#   make ts-client    npm ci (when package-lock.json changes), buf generate (when a proto
#                     changes), tsc into clients/typescript/dist
#   make ts-interop   its tests, with the interop scenario against QUOTA_AUTHORITY_TARGET
#                     (make interop starts a server and sets it)
#   make ts-readme    the README's example output against a real run at QUOTA_AUTHORITY_TARGET
#                     (scripts/readme_output.py; make interop runs it)
#   make ts-clean     removes node_modules, src/gen and dist
TS_DIR := clients/typescript
TS_INSTALLED := $(TS_DIR)/node_modules/.installed
TS_GENERATED := $(TS_DIR)/src/gen/quota_authority/v1/quota_authority.ts
TS_BUILT := $(TS_DIR)/dist/index.js
TS_PROTOS := $(wildcard protos/quota_authority/v1/*.proto) $(wildcard protos/google/api/*.proto) \
	$(wildcard $(TS_DIR)/proto/google/rpc/*.proto)
TS_SOURCES := $(filter-out $(TS_DIR)/src/gen/%,$(wildcard $(TS_DIR)/src/*.ts $(TS_DIR)/src/*/*.ts))

.PHONY: ts-client ts-interop ts-readme ts-clean

ts-client: $(TS_BUILT)

ts-interop: ts-client
	cd $(TS_DIR) && npm test --silent

ts-readme: ts-client $(STAMP)
	$(BIN)/python scripts/readme_output.py $(TS_DIR)/README.md example -- node $(TS_DIR)/dist/example.js

ts-clean:
	rm -rf $(TS_DIR)/node_modules $(TS_DIR)/src/gen $(TS_DIR)/dist

# npm ci installs exactly package-lock.json; install scripts are not needed.
$(TS_INSTALLED): $(TS_DIR)/package.json $(TS_DIR)/package-lock.json
	cd $(TS_DIR) && npm ci --ignore-scripts --no-audit --no-fund
	touch $@

# buf.gen.yaml runs the pinned ts-proto from node_modules; clean: true rewrites all of src/gen.
$(TS_GENERATED): $(TS_PROTOS) $(TS_DIR)/buf.gen.yaml buf.yaml $(TS_INSTALLED) | $(BUF)
	$(BUF) generate --template $(TS_DIR)/buf.gen.yaml
	touch $@

$(TS_BUILT): $(TS_GENERATED) $(TS_SOURCES) $(TS_DIR)/tsconfig.json $(TS_INSTALLED)
	cd $(TS_DIR) && npm run build --silent
	touch $@
