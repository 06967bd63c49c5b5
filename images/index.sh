#!/usr/bin/env bash
# Makes one multi-architecture image out of images pushed per architecture (images/push.sh):
# an OCI image index naming each by digest, pushed as <repository>:<tag>. Prints the index's
# digest (sha256:…), which the chart pins: a node pulls the image of its own architecture.
#
#   images/index.sh <repository>:<tag> <repository>@<digest> [<repository>@<digest>...]
#
# PUSH_TLS_VERIFY=false allows a plain-HTTP registry (the loopback one in the tests).
set -euo pipefail
usage="usage: images/index.sh <repository>:<tag> <repository>@<digest>..."
target=${1:?$usage}
shift
(( $# > 0 )) || { echo "$usage" >&2; exit 2; }
podman=(podman --runtime /usr/sbin/runc)
tls=--tls-verify="${PUSH_TLS_VERIFY:-true}"
list="localhost/sluice-index-$$"
digest_file=$(mktemp)
trap '"${podman[@]}" manifest rm "$list" >/dev/null 2>&1 || true; rm -f "$digest_file"' EXIT
"${podman[@]}" manifest create "$list" >/dev/null
for image in "$@"; do
    [[ $image == *@sha256:* ]] || { echo "index.sh: $image is not named by digest" >&2; exit 2; }
    "${podman[@]}" manifest add "$tls" "$list" "docker://$image" >/dev/null
done
"${podman[@]}" manifest push --all --quiet "$tls" --format oci --digestfile "$digest_file" \
    "$list" "docker://$target" >&2
digest=$(tr -d '[:space:]' < "$digest_file")
[[ $digest == sha256:* ]] || { echo "index.sh: no digest for $target (got '$digest')" >&2; exit 1; }
echo "$digest"
