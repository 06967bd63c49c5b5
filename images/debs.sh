# Sourced by the image builds: unpack Debian packages into a root filesystem, the way our
# images get their files without a registry pull, and skip a build whose result is current.
#
#   image_is_current <podman...> -- <tag> <label> <hash>
#
# prints the image ID and succeeds when <tag> exists with label <label> = <hash>.
#
#   debs_into <cache dir> <root> <package>...
#
# downloads the packages once into <cache dir>/debs (`apt-get download`, after `apt-get update`
# when a download fails) and extracts each with `dpkg-deb -x` into <root>.
debs_into() {
    local cache=$1 root=$2
    shift 2
    mkdir -p "$cache/debs" "$root"
    if ! ls "$cache/debs"/*.deb >/dev/null 2>&1; then
        echo "downloading $*" >&2
        (cd "$cache/debs" && { apt-get download -qq "$@" >&2 2>&1 \
            || { apt-get update -qq >&2 && apt-get download -qq "$@" >&2; }; })
    fi
    local deb
    for deb in "$cache/debs"/*.deb; do
        dpkg-deb -x "$deb" "$root"
    done
}

image_is_current() {
    local podman=()
    while [[ $1 != -- ]]; do podman+=("$1"); shift; done
    shift
    local tag=$1 label=$2 hash=$3 have
    have=$("${podman[@]}" image inspect --format "{{index .Labels \"$label\"}}" "$tag" 2>/dev/null || true)
    [[ "$have" == "$hash" ]] || return 1
    "${podman[@]}" image inspect --format '{{.Id}}' "$tag"
}
