#!/usr/bin/env bash
# Provides the control-plane binaries the test suite and `make dev` run: etcd, kube-apiserver and
# kube-controller-manager, all in one directory (the envtest layout).
#
# Resolution order:
#   1. $KUBEBUILDER_ASSETS, when set (the envtest convention, e.g. from `setup-envtest use -p path`);
#   2. the cache outside the repo, keyed by version: ${HOTCONF_CACHE_DIR:-~/.cache/hotconf}/control-plane/<version>;
#   3. a build from Debian's `kubernetes` source package (1.20.2) and Debian's `etcd-server`.
#
# The last line printed on stdout is the directory; progress goes to stderr. Idempotent.
set -euo pipefail

K8S_VERSION=1.20.2
BINARIES=(etcd kube-apiserver kube-controller-manager)

say() { printf 'control-plane-assets: %s\n' "$*" >&2; }
die() {
	printf 'control-plane-assets: error: %s\n' "$*" >&2
	exit 1
}

has_all() {
	local dir=$1 b
	for b in "${BINARIES[@]}"; do
		[ -x "$dir/$b" ] || return 1
	done
}

missing_in() {
	local dir=$1 b out=()
	for b in "${BINARIES[@]}"; do
		[ -x "$dir/$b" ] || out+=("$b")
	done
	echo "${out[*]}"
}

if [ -n "${KUBEBUILDER_ASSETS:-}" ]; then
	missing=$(missing_in "$KUBEBUILDER_ASSETS")
	case $missing in
	"" | kube-controller-manager) ;;
	*) die "KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS lacks: $missing (unset it to build them here)" ;;
	esac
	# setup-envtest ships etcd and kube-apiserver only; the harness then takes the cached
	# kube-controller-manager (run this script once without KUBEBUILDER_ASSETS to build it).
	[ -z "$missing" ] || say "KUBEBUILDER_ASSETS has no kube-controller-manager: the cached one is used if there is one"
	say "using KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS"
	echo "$KUBEBUILDER_ASSETS"
	exit 0
fi

CACHE_ROOT=${HOTCONF_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/hotconf}
CACHE=$CACHE_ROOT/control-plane/k8s-$K8S_VERSION
if has_all "$CACHE"; then
	say "using cached binaries in $CACHE"
	echo "$CACHE"
	exit 0
fi

say "no cached control plane in $CACHE: building Kubernetes $K8S_VERSION from Debian's source package"
say "a cold build takes about 5-10 minutes on 2 cores; later runs reuse the cache"

# --- 1. Packages -------------------------------------------------------------------------------
PACKAGES=(golang-go etcd-server rsync golang-github-modern-go-reflect2-dev dpkg-dev make)
need=()
for p in "${PACKAGES[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need+=("$p")
done
as_root() {
	if [ "$(id -u)" = 0 ]; then
		"$@"
	elif command -v sudo >/dev/null 2>&1; then
		sudo "$@"
	else
		die "need root (or sudo) to run: $*"
	fi
}
command -v apt-get >/dev/null 2>&1 || die "apt-get not found: this build needs Debian (bookworm). Elsewhere, set KUBEBUILDER_ASSETS to a directory with ${BINARIES[*]} (see setup-envtest)"

apt_updated=
apt_update() {
	[ -n "$apt_updated" ] && return 0
	say "apt-get update"
	as_root apt-get update -qq >&2 || die "apt-get update failed"
	apt_updated=1
}

if [ ${#need[@]} -gt 0 ]; then
	apt_update
	say "installing ${need[*]}"
	DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${need[@]}" >&2 ||
		die "could not install: ${need[*]}"
fi

REFLECT2=/usr/share/gocode/src/github.com/modern-go/reflect2
[ -f "$REFLECT2/reflect2.go" ] || die "Debian's reflect2 source not found at $REFLECT2 (package golang-github-modern-go-reflect2-dev)"
ETCD=$(command -v etcd || true)
[ -n "$ETCD" ] || ETCD=/usr/bin/etcd
[ -x "$ETCD" ] || die "etcd not found (package etcd-server)"

# --- 2. Source ---------------------------------------------------------------------------------
BUILD=$CACHE_ROOT/build/k8s-$K8S_VERSION
mkdir -p "$BUILD"
TREE=$BUILD/kubernetes
if [ ! -f "$TREE/.hotconf-unpacked" ]; then
	cd "$BUILD"
	# Debian versions it 1.20.5+really1.20.2: the tree is 1.20.2.
	if ! ls kubernetes_*.orig.tar.* >/dev/null 2>&1; then
		# A deb-src entry mirroring the machine's own deb entries for Debian main.
		if ! grep -rqs '^Types:.*deb-src' /etc/apt/sources.list.d/ && ! grep -qs '^deb-src' /etc/apt/sources.list; then
			src=""
			if [ -f /etc/apt/sources.list.d/debian.sources ]; then
				src=$(sed 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources)
			elif [ -f /etc/apt/sources.list ]; then
				src=$(sed -n 's/^deb /deb-src /p' /etc/apt/sources.list)
			fi
			[ -n "$src" ] || die "no apt source to derive a deb-src entry from; add a deb-src line for bookworm main"
			say "adding deb-src entries (hotconf-src) to apt's sources"
			if [ -f /etc/apt/sources.list.d/debian.sources ]; then
				echo "$src" | as_root tee /etc/apt/sources.list.d/hotconf-src.sources >/dev/null
			else
				echo "$src" | as_root tee /etc/apt/sources.list.d/hotconf-src.list >/dev/null
			fi
			apt_updated=
		fi
		apt_update
		say "downloading the kubernetes source package"
		apt-get source --download-only kubernetes >&2 ||
			die "apt-get source kubernetes failed (is there a deb-src entry for bookworm main?)"
	fi
	orig=$(find . -maxdepth 1 -name "kubernetes_*really${K8S_VERSION}.orig.tar.*" -o -maxdepth 1 -name "kubernetes_${K8S_VERSION}.orig.tar.*" | head -n1)
	[ -n "$orig" ] || die "no orig tarball of kubernetes $K8S_VERSION in $BUILD (apt-get source fetched another version?)"
	say "unpacking $orig"
	rm -rf "$TREE" "$BUILD/unpack"
	mkdir -p "$BUILD/unpack"
	tar -xf "$orig" -C "$BUILD/unpack"
	top=$(find "$BUILD/unpack" -mindepth 1 -maxdepth 1 -type d | head -n1)
	[ -f "$top/Makefile" ] || die "unexpected layout in $orig"
	mv "$top" "$TREE"
	rm -rf "$BUILD/unpack"
	# The vendored reflect2 1.0.1 crashes (SIGSEGV) under Go >= 1.18 on the first custom resource write.
	say "replacing vendored reflect2 with Debian's 1.0.2"
	rm -rf "$TREE/vendor/github.com/modern-go/reflect2"
	mkdir -p "$TREE/vendor/github.com/modern-go/reflect2"
	cp -r "$REFLECT2"/. "$TREE/vendor/github.com/modern-go/reflect2/"
	touch "$TREE/.hotconf-unpacked"
fi

# --- 3. Build (GOPATH mode, as Debian's rules do) ----------------------------------------------
GOPATH_DIR=$BUILD/gopath
mkdir -p "$GOPATH_DIR/src/k8s.io"
ln -sfn "$TREE" "$GOPATH_DIR/src/k8s.io/kubernetes"
say "building kube-apiserver and kube-controller-manager (go $(go env GOVERSION 2>/dev/null || echo '?'))"
(
	cd "$GOPATH_DIR/src/k8s.io/kubernetes"
	export GOPATH=$GOPATH_DIR GO111MODULE=off GOFLAGS= GOCACHE=$BUILD/gocache
	export KUBE_GIT_VERSION=v$K8S_VERSION KUBE_GIT_TREE_STATE=clean
	make WHAT="cmd/kube-apiserver cmd/kube-controller-manager" >&2
) || die "building Kubernetes failed (see the output above)"

out=$TREE/_output/bin
[ -x "$out/kube-apiserver" ] || out=$(dirname "$(find "$TREE/_output" -type f -name kube-apiserver | head -n1)")
for b in kube-apiserver kube-controller-manager; do
	[ -x "$out/$b" ] || die "build finished but $b is missing under $TREE/_output"
done

mkdir -p "$CACHE.tmp"
cp "$out/kube-apiserver" "$out/kube-controller-manager" "$CACHE.tmp/"
cp "$ETCD" "$CACHE.tmp/etcd"
rm -rf "$CACHE"
mv "$CACHE.tmp" "$CACHE"
say "control plane ready in $CACHE"
echo "$CACHE"
