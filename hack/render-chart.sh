#!/usr/bin/env bash
# Renders charts/hotconf like `helm template`: with helm when it is on PATH, otherwise with the
# small Go renderer in hack/render-chart (text/template + sprig, built once into target/tools).
# Arguments are passed on: -f values.yaml, --set k=v, -n namespace, --name release.
set -euo pipefail
cd "$(dirname "$0")/.."
chart=charts/hotconf

if command -v helm >/dev/null 2>&1; then
	args=() name=hotconf ns=default
	while [ $# -gt 0 ]; do
		case "$1" in
		--name) name=$2; shift 2 ;;
		-n) ns=$2; shift 2 ;;
		*) args+=("$1"); shift ;;
		esac
	done
	exec helm template "$name" "$chart" --namespace "$ns" "${args[@]}"
fi

bin=target/tools/render-chart
src=hack/render-chart/main.go
if [ ! -x "$bin" ] || [ "$src" -nt "$bin" ]; then
	need=()
	command -v go >/dev/null 2>&1 || need+=(golang-go)
	[ -d /usr/share/gocode/src/github.com/Masterminds/sprig ] || need+=(golang-github-masterminds-sprig-dev)
	[ -d /usr/share/gocode/src/sigs.k8s.io/yaml ] || need+=(golang-k8s-sigs-yaml-dev)
	if [ ${#need[@]} -gt 0 ]; then
		echo "render-chart: installing ${need[*]}" >&2
		sudo_=""
		[ "$(id -u)" = 0 ] || sudo_=sudo
		$sudo_ apt-get update -qq >&2
		DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq "${need[@]}" >&2
	fi
	mkdir -p target/tools
	echo "render-chart: building the chart renderer (no helm on PATH)" >&2
	GO111MODULE=off GOPATH=/usr/share/gocode GOCACHE="$PWD/target/tools/gocache" \
		go build -o "$bin" "./$src"
fi
exec "$bin" "$@" "$chart"
