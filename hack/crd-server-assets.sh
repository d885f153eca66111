#!/usr/bin/env bash
# Provides the Kubernetes 1.36 CRD server that the test control plane and `hotconf dev` put behind
# kube-apiserver 1.20 (see src/envtest/): k8s.io/apiextensions-apiserver 0.36.x, the CRD and
# custom-resource half of kube-apiserver 1.36 (CEL rules, ratcheting, server-side apply with
# `subresource: status` in managedFields), with hack/crd-server/main.go as its main package.
#
# Resolution order:
#   1. $HOTCONF_CRD_SERVER, when set: the path of a prebuilt binary, or `none` (kube-apiserver
#      serves custom resources itself: a modern envtest, or the pure-1.20 compatibility mode);
#   2. $KUBEBUILDER_ASSETS with a kube-apiserver of 1.25 or newer: `none`, that server has the
#      semantics already;
#   3. the cache outside the repo, keyed by version:
#      ${HOTCONF_CACHE_DIR:-~/.cache/hotconf}/crd-server/apiextensions-<version>/;
#   4. a build from Debian sid's Go source packages (golang-k8s-apiextensions-apiserver-dev and
#      the ~80 -dev packages it reads, plus sid's Go toolchain): about 100 MB of .debs, downloaded
#      with apt-get's private state under the cache (no apt source, list or package of the system
#      is touched, nothing is installed) and unpacked with dpkg -x; then `go build` in GOPATH
#      mode. About 5 minutes cold on 2 cores (1 to download and unpack, 4 to compile).
#
# The last line printed on stdout is the binary's path (or `none`); progress goes to stderr.
# Idempotent.
set -euo pipefail

WANT_MINOR=36 # the Kubernetes minor whose CRD semantics the suite proves

say() { printf 'crd-server-assets: %s\n' "$*" >&2; }
die() {
	printf 'crd-server-assets: error: %s\n' "$*" >&2
	exit 1
}

if [ -n "${HOTCONF_CRD_SERVER:-}" ]; then
	if [ "$HOTCONF_CRD_SERVER" = none ]; then
		say "HOTCONF_CRD_SERVER=none: kube-apiserver serves custom resources itself"
	else
		[ -x "$HOTCONF_CRD_SERVER" ] || die "HOTCONF_CRD_SERVER=$HOTCONF_CRD_SERVER is not an executable (unset it to build one here)"
		say "using HOTCONF_CRD_SERVER=$HOTCONF_CRD_SERVER"
	fi
	echo "$HOTCONF_CRD_SERVER"
	exit 0
fi

if [ -n "${KUBEBUILDER_ASSETS:-}" ] && [ -x "$KUBEBUILDER_ASSETS/kube-apiserver" ]; then
	minor=$("$KUBEBUILDER_ASSETS/kube-apiserver" --version 2>/dev/null | sed -nE 's/.*v1\.([0-9]+).*/\1/p')
	if [ -n "$minor" ] && [ "$minor" -ge 25 ]; then
		say "KUBEBUILDER_ASSETS has kube-apiserver 1.$minor: it serves custom resources itself"
		echo none
		exit 0
	fi
fi

CACHE_ROOT=${HOTCONF_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/hotconf}
CACHED=$(ls -d "$CACHE_ROOT"/crd-server/apiextensions-1."$WANT_MINOR".*/ 2>/dev/null | sort -V | tail -n1 || true)
if [ -n "$CACHED" ] && [ -x "${CACHED}apiextensions-apiserver" ]; then
	say "using the cached CRD server in ${CACHED%/}"
	echo "${CACHED}apiextensions-apiserver"
	exit 0
fi

command -v apt-get >/dev/null 2>&1 && command -v dpkg >/dev/null 2>&1 ||
	die "apt-get and dpkg are needed to build the CRD server from Debian's packages; elsewhere set HOTCONF_CRD_SERVER to an apiextensions-apiserver 1.$WANT_MINOR binary, or KUBEBUILDER_ASSETS to a kube-apiserver >= 1.25"

start=$(date +%s)
say "no cached CRD server: building k8s.io/apiextensions-apiserver 0.$WANT_MINOR from Debian sid's Go packages"
say "a cold build takes about 5 minutes on 2 cores; later runs reuse the cache"

W=$CACHE_ROOT/build/crd-server
ROOT=$W/root
mkdir -p "$W/apt/lists/partial" "$W/apt/cache/archives/partial" "$W/debs"
APTO=(-o "Dir::Etc::sourcelist=$W/apt/sources.list" -o Dir::Etc::sourceparts=-
	-o "Dir::State::Lists=$W/apt/lists" -o "Dir::Cache=$W/apt/cache"
	-o Dir::State::status=/dev/null -o APT::Get::List-Cleanup=0 -o Acquire::Languages=none
	-o Debug::NoLocking=1 -o APT::Sandbox::User=root)

# --- 1. Packages: sid's index, private to this directory ------------------------------------------
mirror=$({ cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null || true; } |
	grep -v '^ *#' | grep -oE 'https?://[^ ]+/debian/?( |$)' | grep -v security | head -n1 | tr -d ' ')
[ -n "$mirror" ] || die "no Debian mirror found in the apt sources"
echo "deb ${mirror%/} sid main" >"$W/apt/sources.list"
say "apt-get update (sid index from ${mirror%/}, private to $W/apt)"
apt-get "${APTO[@]}" update -qq >&2 || die "apt-get update of the sid index failed"

show() { apt-cache "${APTO[@]}" show "$1" 2>/dev/null | sed -n "s/^$2: //p" | head -n1; }
APIX_VERSION=$(show golang-k8s-apiextensions-apiserver-dev Version)
[ -n "$APIX_VERSION" ] || die "sid has no golang-k8s-apiextensions-apiserver-dev"
upstream=${APIX_VERSION%%-*}     # 0.36.4
upstream=${upstream#*:}
minor=$(echo "$upstream" | cut -d. -f2)
[ "$minor" = "$WANT_MINOR" ] || say "warning: sid has apiextensions-apiserver $upstream, not 0.$WANT_MINOR; building it anyway"
K8S_VERSION=1.${upstream#0.}      # 1.36.4
GO_PKG=$(show golang-go Depends | grep -oE 'golang-1\.[0-9]+-go' | head -n1)
[ -n "$GO_PKG" ] || die "cannot tell sid's Go toolchain package from golang-go's dependencies"
GO_DIR=/usr/lib/go-${GO_PKG#golang-}
GO_DIR=${GO_DIR%-go}
say "apiextensions-apiserver $upstream (Kubernetes $K8S_VERSION), toolchain $GO_PKG"

# The source packages the build reads (found with `go list -deps`). When sid's dependency set has
# moved on, the build below falls back to the whole `apt-cache depends` closure (3x larger).
MIN_PKGS="golang-cel-cel-go-dev golang-cel-expr-dev golang-etcd-server-dev golang-github-antlr4-go-antlr-dev
golang-github-beorn7-perks-dev golang-github-blang-semver-dev golang-github-cenkalti-backoff-v5-dev
golang-github-cespare-xxhash-v2-dev golang-github-coreos-go-semver-dev golang-github-coreos-go-systemd-dev
golang-github-davecgh-go-spew-dev golang-github-docker-spdystream-dev golang-github-emicklei-go-restful-dev
golang-github-evanphx-json-patch-dev golang-github-felixge-httpsnoop-dev golang-github-fsnotify-fsnotify-dev
golang-github-fxamacker-cbor-dev golang-github-go-logr-logr-dev golang-github-go-logr-stdr-dev
golang-github-go-openapi-jsonpointer-dev golang-github-go-openapi-jsonreference-dev golang-github-go-openapi-swag-dev
golang-github-gogo-protobuf-dev golang-github-golang-protobuf-1-5-dev golang-github-google-gnostic-models-dev
golang-github-google-uuid-dev golang-github-gorilla-websocket-dev golang-github-grpc-ecosystem-go-grpc-middleware-dev
golang-github-grpc-ecosystem-grpc-gateway-dev golang-github-json-iterator-go-dev golang-github-kylelemons-godebug-dev
golang-github-modern-go-concurrent-dev golang-github-modern-go-reflect2-dev golang-github-munnerz-goautoneg-dev
golang-github-mxk-go-flowrate-dev golang-github-nytimes-gziphandler-dev golang-github-pkg-errors-dev
golang-github-pmezard-go-difflib-dev golang-github-prometheus-client-golang-dev golang-github-prometheus-client-model-dev
golang-github-prometheus-common-dev golang-github-prometheus-procfs-dev golang-github-spf13-cobra-dev
golang-github-spf13-pflag-dev golang-github-x448-float16-dev golang-go.uber-multierr-dev golang-go.uber-zap-dev
golang-golang-x-crypto-dev golang-golang-x-exp-dev golang-golang-x-net-dev golang-golang-x-oauth2-dev
golang-golang-x-oauth2-google-dev golang-golang-x-sync-dev golang-golang-x-sys-dev golang-golang-x-term-dev
golang-golang-x-text-dev golang-golang-x-time-dev golang-google-genproto-dev golang-google-grpc-dev
golang-google-protobuf-dev golang-gopkg-inf.v0-dev golang-gopkg-natefinch-lumberjack.v2-dev golang-gopkg-yaml.v2-dev
golang-gopkg-yaml.v3-dev golang-k8s-api-dev golang-k8s-apiextensions-apiserver-dev golang-k8s-apimachinery-dev
golang-k8s-apiserver-dev golang-k8s-client-go-dev golang-k8s-component-base-dev golang-k8s-klog-dev golang-k8s-kms-dev
golang-k8s-kube-openapi-dev golang-k8s-sigs-apiserver-network-proxy-dev golang-k8s-sigs-json-dev
golang-k8s-sigs-randfill-dev golang-k8s-sigs-structured-merge-diff-v6-dev golang-k8s-sigs-yaml-dev
golang-k8s-streaming-dev golang-k8s-utils-dev golang-opentelemetry-contrib-dev golang-opentelemetry-otel-dev
golang-opentelemetry-proto-dev"

fetch() { # package names on stdin
	local list
	list=$(sort -u)
	# Only what this directory does not hold yet (the cache of .debs survives a failed build).
	local want=()
	for p in $list; do
		ls "$W/debs/${p}_"*.deb >/dev/null 2>&1 || want+=("$p")
	done
	if [ ${#want[@]} -gt 0 ]; then
		say "downloading ${#want[@]} packages"
		(cd "$W/debs" && apt-get "${APTO[@]}" download -qq "${want[@]}" >&2) || die "apt-get download failed"
	fi
	for p in $list; do
		for f in "$W/debs/${p}_"*.deb; do
			[ -e "$ROOT/.unpacked/$(basename "$f")" ] && continue
			dpkg-deb -x "$f" "$ROOT"
			mkdir -p "$ROOT/.unpacked" && touch "$ROOT/.unpacked/$(basename "$f")"
		done
	done
}

echo "$MIN_PKGS $GO_PKG ${GO_PKG%-go}-src" | tr ' ' '\n' | grep -v '^$' | fetch
[ -x "$ROOT$GO_DIR/bin/go" ] || die "no go binary at $ROOT$GO_DIR/bin/go after unpacking $GO_PKG"

# --- 2. Build (GOPATH mode, offline) --------------------------------------------------------------
SRC_DIR=$(cd "$(dirname "$0")" && pwd)/crd-server
build() {
	mkdir -p "$W/gopath/src/hotconf.dev/crd-server" "$W/gocache" "$W/bin"
	cp "$SRC_DIR/main.go" "$W/gopath/src/hotconf.dev/crd-server/main.go"
	# Without the version stamp /version reports a placeholder that kubectl rejects.
	local v=k8s.io/component-base/version
	local ldf="-s -w -X $v.gitVersion=v$K8S_VERSION -X $v.gitMajor=1"
	ldf+=" -X $v.gitMinor=$(echo "$K8S_VERSION" | cut -d. -f2) -X $v.gitTreeState=clean"
	(
		export GOROOT=$ROOT$GO_DIR PATH=$ROOT$GO_DIR/bin:$PATH
		export GOPATH=$W/gopath:$ROOT/usr/share/gocode GOCACHE=$W/gocache
		export GO111MODULE=off GOTOOLCHAIN=local GOPROXY=off GOFLAGS= CGO_ENABLED=0
		go build -ldflags "$ldf" -o "$W/bin/apiextensions-apiserver" hotconf.dev/crd-server
	) 2>"$W/build.log"
}
say "compiling (go build, GOPATH mode; log in $W/build.log)"
if ! build; then
	if grep -q 'cannot find package' "$W/build.log"; then
		say "sid's dependency set has moved: fetching the whole dependency closure and retrying"
		apt-cache "${APTO[@]}" depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks \
			--no-replaces --no-enhances golang-k8s-apiextensions-apiserver-dev 2>/dev/null |
			grep -v '^ ' | grep -v '^<' | grep -E '^golang-.*-dev$' | fetch
		build || { tail -n 30 "$W/build.log" >&2; die "building the CRD server failed (log: $W/build.log)"; }
	else
		tail -n 30 "$W/build.log" >&2
		die "building the CRD server failed (log: $W/build.log)"
	fi
fi

grep -aq "v$K8S_VERSION" "$W/bin/apiextensions-apiserver" || die "the built server carries no v$K8S_VERSION version stamp"
CACHE=$CACHE_ROOT/crd-server/apiextensions-$K8S_VERSION
mkdir -p "$CACHE.tmp"
cp "$W/bin/apiextensions-apiserver" "$CACHE.tmp/"
cp "$SRC_DIR/main.go" "$CACHE.tmp/main.go"
echo "golang-k8s-apiextensions-apiserver-dev $APIX_VERSION, $GO_PKG, built $(date -u +%FT%TZ)" >"$CACHE.tmp/BUILD-INFO"
rm -rf "$CACHE"
mv "$CACHE.tmp" "$CACHE"
say "CRD server ready in $CACHE ($(($(date +%s) - start)) s)"
echo "$CACHE/apiextensions-apiserver"
