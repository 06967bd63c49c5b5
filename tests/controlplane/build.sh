#!/usr/bin/env bash
# Builds the sluice-controlplane binary (see README.md) into a content-addressed
# cache and prints its absolute path on stdout; everything else goes to stderr.
#
#   bin=$(tests/controlplane/build.sh) && "$bin" up --state-dir /tmp/cp
#
# Cache: ${SLUICE_CACHE:-$HOME/.cache/sluice}/controlplane/<hash>/sluice-controlplane
# where <hash> covers go.mod, go.sum, *.go and this script. A cached binary is printed at
# once (warm path: no Go toolchain needed). GOMODCACHE and GOCACHE keep their
# defaults (~/go/pkg/mod, ~/.cache/go-build) so CI can cache them.
set -euo pipefail

src=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$src"

hash=$(sha256sum build.sh go.mod go.sum ./*.go | sha256sum | cut -d" " -f1)
out_dir="${SLUICE_CACHE:-$HOME/.cache/sluice}/controlplane/$hash"
bin="$out_dir/sluice-controlplane"

if [[ -x "$bin" ]]; then
    echo "$bin"
    exit 0
fi

command -v go >/dev/null || { echo "build.sh: 'go' not found (need Go >= 1.26)" >&2; exit 1; }
echo "build.sh: building sluice-controlplane ($(go version | cut -d' ' -f3)); a cold build takes several minutes" >&2
mkdir -p "$out_dir"
tmp=$(mktemp "$out_dir/.build.XXXXXX")
trap 'rm -f "$tmp"' EXIT
start=$SECONDS
# Stamp the Kubernetes version (as upstream's hack/lib/version.sh does);
# otherwise /version reports "v0.0.0-master+$Format:%H$", which clients such
# as kubectl fail to parse.
kube_version=$(awk '$1 == "k8s.io/kubernetes" { print $2; exit }' go.mod)
major=${kube_version#v}; minor=${major#*.}; major=${major%%.*}; minor=${minor%%.*}
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$kube_version -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
done
# CGO off: a static binary, no C toolchain needed. -buildvcs=false: the
# binary must not depend on the state of the enclosing git checkout.
CGO_ENABLED=0 go build -trimpath -buildvcs=false -ldflags="$ldflags" -o "$tmp" . >&2
chmod 755 "$tmp"
mv -f "$tmp" "$bin" # atomic: concurrent callers see either nothing or a whole binary
echo "build.sh: built in $((SECONDS - start)) s: $bin" >&2
echo "$bin"
