#!/usr/bin/env bash
# Builds one of our images from its own Dockerfile with a binary built on the host, as CI, the
# local cluster and the release workflow do (release.yml runs it on each architecture's release
# binary; only a plain `docker build` uses the Dockerfile's `build` stage):
#
#   images/build.sh inference-server target/debug/inference-server
#   images/build.sh operator target/debug/sluice-operator
#
# The binary is copied (debug info stripped) into an otherwise empty build context and the
# Dockerfile's `prebuilt` stage takes it from there; the runtime base comes from
# images/base/build.sh. Nothing is pulled (`--pull=never`). The image is tagged
# ghcr.io/sluice-dev/<component>:dev-<hash>, <hash> covering the binary, the Dockerfile and the
# base image, so an unchanged binary is not rebuilt. Prints the tag on stdout.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
component=${1:?usage: build.sh <inference-server|operator> <binary>}
binary=${2:?usage: build.sh <inference-server|operator> <binary>}
case "$component" in
    inference-server) dockerfile="$root/inference-server/Dockerfile"; name=inference-server ;;
    operator) dockerfile="$root/operator/Dockerfile"; name=sluice-operator ;;
    *) echo "build.sh: unknown component $component (inference-server or operator)" >&2; exit 2 ;;
esac
[[ -x "$binary" ]] || { echo "build.sh: $binary is not an executable" >&2; exit 1; }
podman=(podman --runtime /usr/sbin/runc)

base=$(bash "$root/images/base/build.sh")
hash=$( { sha256sum < "$binary"; sha256sum < "$dockerfile"; sha256sum < "$0"; echo "$base"; } \
    | sha256sum | cut -c1-16)
tag="ghcr.io/sluice-dev/$component:dev-$hash"
if "${podman[@]}" image exists "$tag"; then
    echo "$tag"
    exit 0
fi
context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
objcopy --strip-debug "$binary" "$context/$name"
"${podman[@]}" build --pull=never --quiet --build-arg BINARY_STAGE=prebuilt \
    -t "$tag" -f "$dockerfile" "$context" >&2
# Older builds of this component and the dangling stage images go, so the store stays small.
"${podman[@]}" images --filter "reference=ghcr.io/sluice-dev/$component" \
    --format '{{.Repository}}:{{.Tag}}' | grep -vxF "$tag" \
    | xargs -r "${podman[@]}" rmi -f >/dev/null 2>&1 || true
"${podman[@]}" image prune -f >/dev/null 2>&1 || true
echo "$tag"
