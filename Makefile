# HelixFlow Makefile. Every tool is pinned in hack/tools/go.mod (or hack/testbin/*/go.mod)
# and built from the Go module proxy on first use; nothing is downloaded from release sites.

SHELL := /usr/bin/env bash -o pipefail
.SHELLFLAGS := -ec

GO        ?= go
TOOLS_BIN := $(CURDIR)/hack/tools/bin
CONTROLLER_GEN := $(TOOLS_BIN)/controller-gen
GOLANGCI_LINT  := $(TOOLS_BIN)/golangci-lint
PROTOC_GEN_GO      := $(TOOLS_BIN)/protoc-gen-go
PROTOC_GEN_GO_GRPC := $(TOOLS_BIN)/protoc-gen-go-grpc

# PROTO_GO_DIRS hold the code generated from proto/ (each .proto's go_package); `make proto`
# empties them first so a removed .proto leaves no stale file behind.
PROTO_GO_DIRS := internal/runtime/grpc/inferencev1 internal/usage/usagev1

GO_TEST_FLAGS ?=

.PHONY: all
all: build

##@ General

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*##"; printf "Usage: make <target>\n"} /^[a-zA-Z_0-9-]+:.*?##/ { printf "  %-16s %s\n", $$1, $$2 } /^##@/ { printf "\n%s\n", substr($$0, 5) }' $(MAKEFILE_LIST)

##@ Development

.PHONY: generate
generate: $(CONTROLLER_GEN) ## Generate deepcopy code.
	$(CONTROLLER_GEN) object:headerFile=hack/boilerplate.go.txt paths=./api/...

.PHONY: manifests
manifests: $(CONTROLLER_GEN) ## Generate CRDs and RBAC from the API types and markers.
	$(CONTROLLER_GEN) crd paths=./api/... output:crd:artifacts:config=config/crd/bases
	$(CONTROLLER_GEN) rbac:roleName=helixflow-manager paths="./cmd/...;./internal/...;./controllers/..." output:rbac:artifacts:config=config/rbac

.PHONY: proto
proto: $(PROTOC_GEN_GO) $(PROTOC_GEN_GO_GRPC) ## Generate the gRPC Go code from proto/ (protoc from Debian, plugins pinned in hack/tools).
	@protoc=$$(hack/install-protoc.sh); \
	rm -f $(PROTO_GO_DIRS:%=%/*.pb.go); \
	echo "$$protoc proto/ -> $(PROTO_GO_DIRS)"; \
	"$$protoc" --proto_path=proto \
		--plugin=protoc-gen-go=$(PROTOC_GEN_GO) --go_out=. --go_opt=module=github.com/helixflow/helixflow \
		--plugin=protoc-gen-go-grpc=$(PROTOC_GEN_GO_GRPC) --go-grpc_out=. --go-grpc_opt=module=github.com/helixflow/helixflow \
		$$(cd proto && find . -name '*.proto' | sed 's|^\./||' | LC_ALL=C sort)

.PHONY: fmt
fmt: ## Format the code (rewrites files; `make verify` only checks).
	gofmt -w $$(git ls-files '*.go')

##@ Build

.PHONY: build
build: ## Build bin/manager and bin/runtime.
	$(GO) build -o bin/manager ./cmd/manager
	$(GO) build -o bin/runtime ./cmd/runtime

.PHONY: run
run: ## Run the manager against the cluster in KUBECONFIG (metrics :8080, probes :8081).
	$(GO) run ./cmd/manager

##@ Testing

.PHONY: test-binaries
test-binaries: ## Build etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, kwok (once).
	@dir=$$(hack/testbin/build.sh); echo "test binaries in $$dir"

.PHONY: test
test: ## Run all tests against a real API server (builds the test binaries first). Rewrites nothing.
	@dir=$$(hack/testbin/build.sh); \
	echo "KUBEBUILDER_ASSETS=$$dir go test $(GO_TEST_FLAGS) ./..."; \
	KUBEBUILDER_ASSETS="$$dir" $(GO) test $(GO_TEST_FLAGS) ./...

BENCH_MODELS ?= 200

.PHONY: bench
bench: ## Reconcile benchmark against a real API server (prints figures; BENCH_MODELS=1000 for the target).
	@dir=$$(hack/testbin/build.sh); KUBEBUILDER_ASSETS="$$dir" $(GO) run ./test/bench/reconcile -models $(BENCH_MODELS)

.PHONY: bench-dataplane
bench-dataplane: ## Data-plane benchmark: direct vs runtime serve vs nginx, each its own process; runtime against envtest (prints figures).
	@dir=$$(hack/testbin/build.sh); KUBEBUILDER_ASSETS="$$dir" $(GO) run ./test/bench/dataplane $(BENCH_DATAPLANE_FLAGS)

.PHONY: verify
verify: generate manifests proto ## Regenerate, then fail on any diff; gofmt, go vet, golangci-lint, tidy.
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [[ -n "$$out" ]]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) mod tidy -diff
	$(MAKE) lint
	@if [[ -n "$$(git status --porcelain -- api config charts go.mod go.sum internal/runtime/grpc internal/usage proto)" ]]; then \
		echo "generated files are out of date; run 'make generate manifests proto' and commit:"; \
		git status --porcelain -- api config charts go.mod go.sum internal/runtime/grpc internal/usage proto; git diff --stat; exit 1; fi

.PHONY: lint
lint: $(GOLANGCI_LINT) ## Run golangci-lint.
	$(GOLANGCI_LINT) run ./...

$(CONTROLLER_GEN): hack/tools/go.mod
	cd hack/tools && $(GO) build -o $(CONTROLLER_GEN) sigs.k8s.io/controller-tools/cmd/controller-gen

$(PROTOC_GEN_GO): hack/tools/go.mod
	cd hack/tools && $(GO) build -o $(PROTOC_GEN_GO) google.golang.org/protobuf/cmd/protoc-gen-go

$(PROTOC_GEN_GO_GRPC): hack/tools/go.mod
	cd hack/tools && $(GO) build -o $(PROTOC_GEN_GO_GRPC) google.golang.org/grpc/cmd/protoc-gen-go-grpc

$(GOLANGCI_LINT): hack/lint/go.mod
	cd hack/lint && $(GO) build -o $(GOLANGCI_LINT) github.com/golangci/golangci-lint/v2/cmd/golangci-lint
