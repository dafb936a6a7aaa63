# The Go client (clients/go): included from the root Makefile, so paths are relative to the
# repository root. See clients/go/README.md.
#
#   make go-client         regenerate clients/go/gen from the proto (only when the proto
#                          changed); the generated code is committed, so commit it with the
#                          proto change
#   make go-client-check   fail if the committed clients/go/gen differs from what the proto
#                          generates (part of make lint, so CI)
#   make go-interop        go vet and go test in clients/go; the interop test needs a server
#                          at QUOTA_AUTHORITY_TARGET, so run it through `make interop`
#   make go-readme         the README's example output and its snippet's line against a real
#                          run at QUOTA_AUTHORITY_TARGET (scripts/readme_output.py; make interop)
#
# The protoc plugins are installed with `go install`, pinned, into .tools/bin; buf is the
# root Makefile's $(BUF).
PROTOC_GEN_GO_VERSION := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.6.2
GO_CLIENT_GENERATED := clients/go/gen/quota_authority/v1/quota_authority_grpc.pb.go
GO_CLIENT_PLUGINS := .tools/bin/.protoc-gen-go-$(PROTOC_GEN_GO_VERSION) \
	.tools/bin/.protoc-gen-go-grpc-$(PROTOC_GEN_GO_GRPC_VERSION)

.PHONY: go-client go-client-check go-interop go-readme

go-client: $(GO_CLIENT_GENERATED)

# Each install is a file target named for its version, so changing a pin above reinstalls it.
.tools/bin/.protoc-gen-go-$(PROTOC_GEN_GO_VERSION):
	GOBIN=$(CURDIR)/.tools/bin go install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
	touch $@

.tools/bin/.protoc-gen-go-grpc-$(PROTOC_GEN_GO_GRPC_VERSION):
	GOBIN=$(CURDIR)/.tools/bin go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)
	touch $@

# Regenerates when any proto, the template or a plugin pin changes. Old output is removed
# first, so a file deleted from the proto leaves no stale Go code behind. On a fresh clone
# the committed files may look older than the proto; regenerating them changes nothing.
$(GO_CLIENT_GENERATED): $(wildcard protos/*/*/*.proto) buf.yaml clients/go/buf.gen.yaml \
		$(BUF) $(GO_CLIENT_PLUGINS)
	rm -rf clients/go/gen
	$(BUF) generate --template clients/go/buf.gen.yaml
	touch $@

# Generates into a temporary directory (buf's --output is prepended to the template's out
# paths) and compares it with clients/go/gen, which it never touches: a file that differs,
# is missing or is left over fails the check. The diff's - lines are the committed code,
# its + lines what the proto generates.
go-client-check: $(BUF) $(GO_CLIENT_PLUGINS)
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	$(BUF) generate --template clients/go/buf.gen.yaml --output "$$tmp" && \
	if diff -ru clients/go/gen "$$tmp/clients/go/gen"; then \
		echo "go-client-check: clients/go/gen matches the proto"; \
	else \
		echo "go-client-check: clients/go/gen is not what the proto generates;" \
			"run \`make go-client\` and commit clients/go/gen" >&2; \
		exit 1; \
	fi

go-interop: go-client
	cd clients/go && go vet ./... && go test -count=1 ./...

# Built first, so what the go command prints while building is not taken for their output.
go-readme: go-client $(STAMP)
	cd clients/go && go build -o $(CURDIR)/.tools/bin/go-example ./cmd/example
	$(BIN)/python scripts/readme_output.py clients/go/README.md example -- .tools/bin/go-example
	$(BIN)/python scripts/readme_output.py clients/go/README.md snippet --cwd clients/go \
		--snippet go:.readme/main.go -- sh -c \
		'go build -o $(CURDIR)/.tools/bin/go-readme-snippet ./.readme && $(CURDIR)/.tools/bin/go-readme-snippet'
