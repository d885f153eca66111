#!/usr/bin/env bash
# Installs what the test suite needs besides Rust and the control plane: lua5.4 (the Argo CD
# health check test) and, when helm is not on PATH, Go with sprig and sigs.k8s.io/yaml (the chart
# renderer). Idempotent; Debian/apt.
set -euo pipefail
need=()
command -v lua5.4 >/dev/null 2>&1 || need+=(lua5.4)
if ! command -v helm >/dev/null 2>&1; then
	command -v go >/dev/null 2>&1 || need+=(golang-go)
	[ -d /usr/share/gocode/src/github.com/Masterminds/sprig ] || need+=(golang-github-masterminds-sprig-dev)
	[ -d /usr/share/gocode/src/sigs.k8s.io/yaml ] || need+=(golang-k8s-sigs-yaml-dev)
fi
command -v kubectl >/dev/null 2>&1 || { echo "test-deps: kubectl is required on PATH" >&2; exit 1; }
[ ${#need[@]} -eq 0 ] && exit 0
command -v apt-get >/dev/null 2>&1 || { echo "test-deps: install ${need[*]} (no apt-get here)" >&2; exit 1; }
sudo_=""
[ "$(id -u)" = 0 ] || sudo_=sudo
echo "test-deps: installing ${need[*]}" >&2
$sudo_ apt-get update -qq >&2
DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq "${need[@]}" >&2
