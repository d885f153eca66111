# hotconf — the two commands that matter: `make dev` and `make test`.
SHELL := /bin/bash
CARGO ?= cargo
ASSETS := hack/control-plane-assets.sh
# The directory with etcd, kube-apiserver and kube-controller-manager (built or cached on demand).
ASSETS_DIR = $$(bash $(ASSETS) | tail -n 1)

.PHONY: all build assets dev run test test-unit lint fmt crds clean-dev

all: build

build:
	$(CARGO) build

## assets: get etcd, kube-apiserver and kube-controller-manager (KUBEBUILDER_ASSETS, cache, or build)
assets:
	@bash $(ASSETS) >/dev/null

## dev: a local control plane under .dev/ with the CRDs, the examples and the operator (Ctrl-C stops)
dev: build
	@dir=$(ASSETS_DIR) && KUBEBUILDER_ASSETS=$$dir ./target/debug/hotconf dev --dir .dev

## run: the operator against the current kubeconfig (an existing cluster)
run: build
	./target/debug/hotconf operator

## test: everything — assets, unit tests and integration tests against a real control plane
test:
	@bash hack/test-deps.sh
	@dir=$(ASSETS_DIR) && echo "control plane binaries: $$dir" && \
	KUBEBUILDER_ASSETS=$$dir $(CARGO) test --lib --bins --tests --no-fail-fast

test-unit:
	$(CARGO) test --lib

## lint: formatting and clippy, warnings are errors
lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

fmt:
	$(CARGO) fmt

clean-dev:
	rm -rf .dev

## bench-agent: pod-side hot-reload latency (kubelet ..data swap and API update -> app), p50/p99
.PHONY: bench-agent
bench-agent:
	@dir=$(ASSETS_DIR) && KUBEBUILDER_ASSETS=$$dir $(CARGO) bench --bench agent_latency

## bench: the operator (release build) against a local control plane, every figure beside a floor
## measured on the same API server; prints one table and writes target/bench/report.json
.PHONY: bench
bench:
	@dir=$(ASSETS_DIR) && echo "control plane binaries: $$dir" && \
	$(CARGO) build --release && \
	$(CARGO) bench --no-run --bench core --bench cluster && \
	$(CARGO) bench --bench core -- --quiet && \
	tmp=$$( [ -d /dev/shm ] && [ -w /dev/shm ] && echo /dev/shm || echo "$${TMPDIR:-/tmp}" ) && \
	KUBEBUILDER_ASSETS=$$dir TMPDIR=$$tmp $(CARGO) bench --bench cluster && \
	KUBEBUILDER_ASSETS=$$dir TMPDIR=$$tmp $(CARGO) bench --bench admission && \
	KUBEBUILDER_ASSETS=$$dir $(CARGO) bench --bench agent_latency
