#!/usr/bin/env bash
# Pushes one of our local images to a registry and prints the digest it is stored under
# (sha256:…): how the chart names our images. The tests push to the loopback registry and the
# release workflow to ghcr.io with this same script (images/build.sh made the image).
#
#   images/push.sh <local image> <repository>:<tag>
#
# PUSH_TLS_VERIFY=false allows a plain-HTTP registry (the loopback one in the tests).
set -euo pipefail
usage="usage: images/push.sh <local image> <repository>:<tag>"
image=${1:?$usage}
target=${2:?$usage}
podman=(podman --runtime /usr/sbin/runc)
digest_file=$(mktemp)
trap 'rm -f "$digest_file"' EXIT
"${podman[@]}" push --quiet --tls-verify="${PUSH_TLS_VERIFY:-true}" \
    --digestfile "$digest_file" "$image" "docker://$target" >&2
digest=$(tr -d '[:space:]' < "$digest_file")
[[ $digest == sha256:* ]] || { echo "push.sh: no digest for $target (got '$digest')" >&2; exit 1; }
echo "$digest"
