# The Go client (clients/go): included from the root Makefile, so paths are relative to the
# repository root. See clients/go/README.md.
#
#   make go-client    generate clients/go/gen from the proto (only when the proto changed)
#   make go-interop   go vet and go test in clients/go; the interop test needs a server at
#                     QUOTA_AUTHORITY_TARGET, so run it through `make interop`
#
# The protoc plugins are installed with `go install`, pinned, into .tools/bin; buf is the
# root Makefile's $(BUF).
PROTOC_GEN_GO_VERSION := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.6.2
GO_CLIENT_GENERATED := clients/go/gen/quota_authority/v1/quota_authority_grpc.pb.go

.PHONY: go-client go-interop

go-client: $(GO_CLIENT_GENERATED)

# Each install is a file target named for its version, so changing a pin above reinstalls it.
.tools/bin/.protoc-gen-go-$(PROTOC_GEN_GO_VERSION):
	GOBIN=$(CURDIR)/.tools/bin go install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
	touch $@

.tools/bin/.protoc-gen-go-grpc-$(PROTOC_GEN_GO_GRPC_VERSION):
	GOBIN=$(CURDIR)/.tools/bin go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)
	touch $@

# Regenerates when any proto, the template or a plugin pin changes. Old output is removed
# first, so a file deleted from the proto leaves no stale Go code behind.
$(GO_CLIENT_GENERATED): $(wildcard protos/*/*/*.proto) buf.yaml clients/go/buf.gen.yaml \
		$(BUF) .tools/bin/.protoc-gen-go-$(PROTOC_GEN_GO_VERSION) \
		.tools/bin/.protoc-gen-go-grpc-$(PROTOC_GEN_GO_GRPC_VERSION)
	rm -rf clients/go/gen
	$(BUF) generate --template clients/go/buf.gen.yaml
	touch $@

go-interop: go-client
	cd clients/go && go vet ./... && go test -count=1 ./...
