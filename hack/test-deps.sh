#!/usr/bin/env bash
# Installs what the test suite needs besides Rust and the control plane: lua5.4 (the Argo CD
# health check test), when helm is not on PATH, Go with sprig and sigs.k8s.io/yaml (the chart
# renderer), and flagd's evaluator from PyPI in a virtualenv (tests/flagd_compat.rs).
# Idempotent; Debian/apt and pip.
set -euo pipefail
need=()
command -v lua5.4 >/dev/null 2>&1 || need+=(lua5.4)
if ! command -v helm >/dev/null 2>&1; then
	command -v go >/dev/null 2>&1 || need+=(golang-go)
	[ -d /usr/share/gocode/src/github.com/Masterminds/sprig ] || need+=(golang-github-masterminds-sprig-dev)
	[ -d /usr/share/gocode/src/sigs.k8s.io/yaml ] || need+=(golang-k8s-sigs-yaml-dev)
fi
command -v kubectl >/dev/null 2>&1 || { echo "test-deps: kubectl is required on PATH" >&2; exit 1; }
python3 -m venv --help >/dev/null 2>&1 || need+=(python3-venv)
# flagd's own evaluator, the Python OpenFeature SDK's OFREP provider and flagd's provider (its
# in-process FILE resolver), for tests/flagd_compat.rs and the agent's OFREP and flagd-file
# tests (PyPI; a virtualenv under the cache).
flagd_core() {
	local venv="${HOME}/.cache/hotconf/python/flagd-core-2.0.0"
	[ -x "$venv/bin/python" ] && "$venv/bin/python" -c 'import openfeature.contrib.tools.flagd.core, openfeature.contrib.provider.ofrep, openfeature.contrib.provider.flagd' 2>/dev/null && return 0
	echo "test-deps: installing openfeature-flagd-core 2.0.0, openfeature-provider-ofrep 0.3.0 and openfeature-provider-flagd 0.6.1 into $venv" >&2
	python3 -m venv "$venv" >&2
	"$venv/bin/pip" install -q openfeature-flagd-core==2.0.0 openfeature-provider-ofrep==0.3.0 openfeature-provider-flagd==0.6.1 >&2
}
if [ ${#need[@]} -eq 0 ]; then
	flagd_core
	exit 0
fi
command -v apt-get >/dev/null 2>&1 || { echo "test-deps: install ${need[*]} (no apt-get here)" >&2; exit 1; }
sudo_=""
[ "$(id -u)" = 0 ] || sudo_=sudo
echo "test-deps: installing ${need[*]}" >&2
$sudo_ apt-get update -qq >&2
DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq "${need[@]}" >&2
flagd_core
