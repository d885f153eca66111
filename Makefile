# hotconf — the two commands that matter: `make dev` and `make test`.
SHELL := /bin/bash
CARGO ?= cargo
ASSETS := hack/control-plane-assets.sh
CRD_SERVER := hack/crd-server-assets.sh
# The directory with etcd, kube-apiserver and kube-controller-manager (built or cached on demand).
ASSETS_DIR = $$(bash $(ASSETS) | tail -n 1)
# Sets KUBEBUILDER_ASSETS (that directory) and HOTCONF_CRD_SERVER (the Kubernetes 1.36 CRD server
# that serves custom resources beside kube-apiserver 1.20, or `none` for a modern
# kube-apiserver), building or reusing both.
CONTROL_PLANE = dir=$(ASSETS_DIR) && crd=$$(KUBEBUILDER_ASSETS=$$dir bash $(CRD_SERVER) | tail -n 1) && \
	echo "control plane binaries: $$dir; CRD server: $$crd" && \
	export KUBEBUILDER_ASSETS=$$dir HOTCONF_CRD_SERVER=$$crd

.PHONY: all build assets dev run test test-unit lint fmt crds clean-dev

all: build

build:
	$(CARGO) build

## assets: get etcd, kube-apiserver and kube-controller-manager (KUBEBUILDER_ASSETS, cache, or build),
## and the Kubernetes 1.36 CRD server (HOTCONF_CRD_SERVER, cache, or build)
assets:
	@$(CONTROL_PLANE)

## dev: a local control plane under .dev/ with the CRDs, the examples and the operator (Ctrl-C stops)
dev: build
	@$(CONTROL_PLANE) && ./target/debug/hotconf dev --dir .dev

## run: the operator against the current kubeconfig (an existing cluster)
run: build
	./target/debug/hotconf operator

## test: everything — assets, unit tests and integration tests against a real control plane
test:
	@bash hack/test-deps.sh
	@$(CONTROL_PLANE) && $(CARGO) test --lib --bins --tests --no-fail-fast

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
	@$(CONTROL_PLANE) && $(CARGO) bench --bench agent_latency

## bench: the operator (release build) against a local control plane, every figure beside a floor
## measured on the same API server; prints one table and writes target/bench/report.json
.PHONY: bench
bench:
	@$(CONTROL_PLANE) && \
	$(CARGO) build --release && \
	$(CARGO) bench --no-run --bench core --bench cluster --bench fleet && \
	$(CARGO) bench --bench core -- --quiet && \
	tmp=$$( [ -d /dev/shm ] && [ -w /dev/shm ] && echo /dev/shm || echo "$${TMPDIR:-/tmp}" ) && \
	TMPDIR=$$tmp $(CARGO) bench --bench cluster && \
	TMPDIR=$$tmp $(CARGO) bench --bench admission && \
	TMPDIR=$$tmp $(CARGO) bench --bench fleet && \
	$(CARGO) bench --bench agent_latency && \
	$(CARGO) bench --bench ofrep

## chaos: the chaos suite (release build): operator replicas behind a fault proxy, writers, faults
## on a schedule (leader kills and handovers, kube-apiserver and etcd restarts, compaction, the
## proxy's latency, error bursts, conflicts, resets and stalls), every invariant counted; prints
## one table and writes target/chaos/report.json. HOTCONF_CHAOS_SCALE=0.1 for a quick look.
.PHONY: chaos
chaos:
	@$(CONTROL_PLANE) && \
	tmp=$$( [ -d /dev/shm ] && [ -w /dev/shm ] && echo /dev/shm || echo "$${TMPDIR:-/tmp}" ) && \
	TMPDIR=$$tmp $(CARGO) bench --bench chaos
