#!/usr/bin/env bash
# Assembles the runtime base of our images, what gcr.io/distroless/cc-debian12:nonroot holds,
# from Debian 12 packages (no registry pull): glibc, libgcc, libstdc++, libgomp, libssl3, CA
# certificates, tzdata, netbase, /etc/passwd and /etc/group with root (0), nonroot (65532) and
# nobody (65534), /tmp (1777) and /home/nonroot. No shell, no package manager. Tagged locally
# as gcr.io/distroless/cc-debian12:nonroot, the name our Dockerfiles use, and labelled with
# the hash of this script so a second run only checks. Prints the image ID on stdout.
#
# Needs: apt-get (Debian package lists; `apt-get update` is run when a download fails),
# dpkg-deb, podman.
set -euo pipefail
src=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
tag=gcr.io/distroless/cc-debian12:nonroot
packages=(libc6 libgcc-s1 libstdc++6 libgomp1 libssl3 ca-certificates tzdata netbase)
hash=$(cat "$src/build.sh" "$src/../debs.sh" | sha256sum | cut -c1-16)
podman=(podman --runtime /usr/sbin/runc)

# shellcheck source=../debs.sh
source "$src/../debs.sh"
if image_is_current "${podman[@]}" -- "$tag" dev.sluice.base-hash "$hash"; then
    exit 0
fi

cache="${SLUICE_CACHE:-$HOME/.cache/sluice}/base/$hash"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root="$work/rootfs"
debs_into "$cache" "$root" "${packages[@]}"
# Trim what a distroless image does not carry.
rm -rf "$root/usr/share/doc" "$root/usr/share/man" "$root/usr/share/info" \
    "$root/usr/share/lintian" "$root/usr/share/locale" "$root/usr/sbin" "$root/usr/bin" \
    "$root/sbin" "$root/bin" "$root/etc/init.d" "$root/etc/default"
# The CA bundle that update-ca-certificates would write at install.
mkdir -p "$root/etc/ssl/certs"
find "$root/usr/share/ca-certificates" -name '*.crt' -print0 | sort -z \
    | xargs -0 cat > "$root/etc/ssl/certs/ca-certificates.crt"
cat > "$root/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
PASSWD
cat > "$root/etc/group" <<'GROUP'
root:x:0:
nobody:x:65534:
tty:x:5:
staff:x:50:
nonroot:x:65532:
GROUP
printf 'hosts: files dns\nnetworks: files\nprotocols: files\nservices: files\n' > "$root/etc/nsswitch.conf"
mkdir -p "$root/tmp" "$root/root" "$root/home/nonroot" "$root/var/lib" "$root/run"
chmod 1777 "$root/tmp"
chmod 700 "$root/root" "$root/home/nonroot"
chown 65532:65532 "$root/home/nonroot"
cat > "$work/Containerfile" <<'CONTAINERFILE'
FROM scratch
COPY rootfs/ /
USER 65532:65532
WORKDIR /home/nonroot
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
CONTAINERFILE
"${podman[@]}" build --pull=never --quiet --label "dev.sluice.base-hash=$hash" \
    -t "$tag" -f "$work/Containerfile" "$work" >&2
"${podman[@]}" image inspect --format '{{.Id}}' "$tag"
