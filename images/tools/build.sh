#!/usr/bin/env bash
# Builds the test-workload image, localhost/sluice-test/tools:latest: the distroless base
# (images/base/build.sh) plus a static busybox (/bin/busybox with a /bin link for every applet:
# /bin/sh, sleep, cat, id, nc, httpd, wget, ...; /usr/bin/env) and CPython 3.11 from Debian 12
# packages (/usr/bin/python3, standard library with ssl, sqlite3, ctypes, ..., byte-compiled).
# The test kubelet runs it as real containers where a test used to run the host's /bin/sh or
# /usr/bin/python3, so workloads get a root filesystem of their own. It is deliberately a ROOT
# image (USER 0:0): tests use it to show that a runAsNonRoot pod of a root image is refused.
# Not for production. Labelled with the hash of this script and of the base image ID, so a
# second run only checks, and a new base or a changed script rebuilds. Prints the image ID on
# stdout, logs on stderr.
#
# Needs: apt-get (Debian package lists; `apt-get update` is run when a download fails),
# dpkg-deb, podman, /usr/sbin/runc. Downloads are cached under ${SLUICE_CACHE:-~/.cache/sluice}.
set -euo pipefail
src=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
tag=localhost/sluice-test/tools:latest
base=gcr.io/distroless/cc-debian12:nonroot
# The base already has libc6, libgcc-s1, libstdc++6, libssl3, ca-certificates, tzdata, netbase.
# libnsl2 (and its libtirpc3 -> Kerberos chain) is left out: only the deprecated `nis` module
# needs it, and that module is removed below.
packages=(busybox-static
    python3.11-minimal libpython3.11-minimal libpython3.11-stdlib media-types
    libexpat1 zlib1g libffi8 libbz2-1.0 liblzma5 libsqlite3-0 libuuid1 libncursesw6 libtinfo6
    libreadline8 libcrypt1 libdb5.3)
podman=(podman --runtime /usr/sbin/runc)

base_id=$(bash "$src/../base/build.sh")
script_hash=$(cat "$src/build.sh" "$src/../debs.sh" | sha256sum | cut -c1-16)
hash=$(printf '%s\n%s\n' "$script_hash" "$base_id" | sha256sum | cut -c1-16)

# shellcheck source=../debs.sh
source "$src/../debs.sh"
if image_is_current "${podman[@]}" -- "$tag" dev.sluice.tools-hash "$hash"; then
    exit 0
fi

# The .debs depend only on this script (the package list), not on the base.
cache="${SLUICE_CACHE:-$HOME/.cache/sluice}/tools/$script_hash"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root="$work/rootfs"
debs_into "$cache" "$root" "${packages[@]}"
# Trim: docs, and what a test workload never uses (the C-API test modules, nis, idle, tkinter,
# the busybox initramfs hooks).
rm -rf "$root/usr/share/doc" "$root/usr/share/man" "$root/usr/share/info" \
    "$root/usr/share/lintian" "$root/usr/share/bug" "$root/usr/share/binfmts" \
    "$root/usr/share/initramfs-tools" "$root/usr/share/locale"
rm -f "$root"/usr/lib/python3.11/lib-dynload/{_test,_xxtest,xxlimited,nis.,_ctypes_test}*.so
rm -rf "$root/usr/lib/python3.11/idlelib" "$root/usr/lib/python3.11/tkinter" \
    "$root/usr/lib/python3.11/turtledemo"
# Busybox: one link per applet, in /bin (the base has no /bin, /usr/bin or /sbin at all).
[[ -x "$root/bin/busybox" ]] || { echo "tools/build.sh: no bin/busybox in busybox-static" >&2; exit 1; }
"$root/bin/busybox" --list | while read -r applet; do
    [[ "$applet" == busybox || -z "$applet" ]] && continue
    ln -sf busybox "$root/bin/$applet"
done
mkdir -p "$root/usr/bin" "$root/usr/local/bin"
ln -sf /bin/busybox "$root/usr/bin/env"
ln -sf python3.11 "$root/usr/bin/python3"
ln -sf python3.11 "$root/usr/bin/python"
cat > "$work/Containerfile" <<'CONTAINERFILE'
FROM gcr.io/distroless/cc-debian12:nonroot
COPY rootfs/ /
USER 0:0
WORKDIR /
ENV PATH=/usr/local/bin:/usr/bin:/bin
# Byte-compile the standard library once, so a workload (often on a read-only root) does not
# recompile it at each start. unchecked-hash: valid whatever the layers do to mtimes.
RUN ["/usr/bin/python3.11", "-m", "compileall", "-q", "-j", "0", "--invalidation-mode", "unchecked-hash", "/usr/lib/python3.11"]
CONTAINERFILE
echo "tools/build.sh: building $tag on $base ($base_id)" >&2
"${podman[@]}" build --pull=never --quiet --label "dev.sluice.tools-hash=$hash" \
    --label "dev.sluice.tools-base=$base_id" \
    -t "$tag" -f "$work/Containerfile" "$work" >&2
"${podman[@]}" image inspect --format '{{.Id}}' "$tag"
