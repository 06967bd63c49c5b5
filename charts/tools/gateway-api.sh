#!/usr/bin/env bash
# Brings the Gateway API CRDs (Go module sigs.k8s.io/gateway-api, pinned) into the Go module
# cache and prints the absolute path of the standard channel's HTTPRoute CRD on stdout;
# everything else goes to stderr. The chart tests validate rendered HTTPRoutes against it.
#
#   crd=$(bash charts/tools/gateway-api.sh) && grep -c openAPIV3Schema "$crd"
#
# Idempotent: the module cache is the cache (`go env GOMODCACHE`); a cached module is printed
# without network access. The module's go.sum hash is pinned below; a mismatch fails.
set -euo pipefail

MODULE=sigs.k8s.io/gateway-api
GATEWAY_API_VERSION=v1.6.3
MODULE_SUM=h1:lKpJa5bGlraC/QeACvCpsHLdmO6y0iKfzVl6gzaFEYc=
CRD=config/crd/standard/gateway.networking.k8s.io_httproutes.yaml

command -v go >/dev/null || { echo "gateway-api.sh: 'go' not found" >&2; exit 1; }

# Outside any module and workspace, so no go.mod, go.sum or go.work is read or written.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
json=$(cd "$work" && GOWORK=off GOFLAGS=-mod=mod go mod download -json "$MODULE@$GATEWAY_API_VERSION") || {
    echo "gateway-api.sh: go mod download $MODULE@$GATEWAY_API_VERSION failed:" >&2
    echo "$json" >&2
    exit 1
}
field() { sed -n "s/^[[:space:]]*\"$1\": \"\(.*\)\",\{0,1\}\$/\1/p" <<<"$json"; }
sum=$(field Sum)
dir=$(field Dir)
if [[ "$sum" != "$MODULE_SUM" ]]; then
    echo "gateway-api.sh: $MODULE@$GATEWAY_API_VERSION has sum '$sum', expected $MODULE_SUM" >&2
    exit 1
fi
if [[ ! -f "$dir/$CRD" ]]; then
    echo "gateway-api.sh: $CRD not found in '$dir'" >&2
    exit 1
fi
echo "$dir/$CRD"
