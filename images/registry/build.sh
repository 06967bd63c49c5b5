#!/usr/bin/env bash
# Builds sluice-registry (main.go: go-containerregistry's registry handler, blobs on disk,
# loopback only) into a content-addressed cache and prints its absolute path on stdout; the
# rest goes to stderr. The test harness runs it; images are pushed there by digest and the test
# kubelet pulls them as a node pulls from a real registry.
#
# Cache: ${SLUICE_CACHE:-$HOME/.cache/sluice}/registry/<hash>/sluice-registry
set -euo pipefail
src=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$src"
hash=$(sha256sum build.sh go.mod go.sum main.go | sha256sum | cut -c1-16)
out_dir="${SLUICE_CACHE:-$HOME/.cache/sluice}/registry/$hash"
bin="$out_dir/sluice-registry"
if [[ -x "$bin" ]]; then
    echo "$bin"
    exit 0
fi
command -v go >/dev/null || { echo "registry/build.sh: 'go' not found" >&2; exit 1; }
mkdir -p "$out_dir"
tmp=$(mktemp "$out_dir/.build.XXXXXX")
trap 'rm -f "$tmp"' EXIT
CGO_ENABLED=0 go build -trimpath -buildvcs=false -ldflags="-s -w" -o "$tmp" . >&2
chmod 755 "$tmp"
mv -f "$tmp" "$bin"
echo "registry/build.sh: built $bin" >&2
echo "$bin"
