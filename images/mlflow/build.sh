#!/usr/bin/env bash
# Builds the MLflow runtime image, localhost/sluice/mlflow-runtime:<version>: MLflow's own
# scoring server (`mlflow models serve`; the entrypoint, init.py, runs `python3.11 -m mlflow`) for
# the model flavors the builtin runtime does not run (python_function, sklearn, xgboost,
# lightgbm). The distroless base (images/base/build.sh) plus CPython 3.11 and bash (the scoring
# backend starts uvicorn through `bash -c`) from Debian 12 packages, and the pinned packages of
# requirements.txt installed under /opt/mlflow with pip for that same Python. Runs as nonroot
# (65532) with its working folder and HOME in /tmp. Labelled with the hash of its inputs, so a
# second run only checks. Prints the image ID on stdout, logs on stderr.
#
# Needs: apt-get, dpkg-deb, podman, /usr/sbin/runc, and /usr/bin/python3.11 with pip (Debian
# 12's python3-pip) to install the wheels; PyPI (or a mirror pip is configured with).
set -euo pipefail
src=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
version=$(bash "$src/../../.ci/version.sh" 2>/dev/null || echo dev)
tag=localhost/sluice/mlflow-runtime:${SLUICE_MLFLOW_RUNTIME_TAG:-$version}
packages=(python3.11-minimal libpython3.11-minimal libpython3.11-stdlib media-types
    libexpat1 zlib1g libffi8 libbz2-1.0 liblzma5 libsqlite3-0 libuuid1 libncursesw6 libtinfo6
    libreadline8 libcrypt1 libdb5.3 bash)
podman=(podman --runtime /usr/sbin/runc)

base_id=$(bash "$src/../base/build.sh")
script_hash=$(cat "$src/build.sh" "$src/Containerfile" "$src/requirements.txt" "$src/../debs.sh" \
    "$src/init.py" | sha256sum | cut -c1-16)
hash=$(printf '%s\n%s\n' "$script_hash" "$base_id" | sha256sum | cut -c1-16)

# shellcheck source=../debs.sh
source "$src/../debs.sh"
if image_is_current "${podman[@]}" -- "$tag" dev.sluice.mlflow-runtime-hash "$hash"; then
    exit 0
fi

cache="${SLUICE_CACHE:-$HOME/.cache/sluice}/mlflow-runtime/$script_hash"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root="$work/rootfs"
debs_into "$cache" "$root" "${packages[@]}"
rm -rf "$root/usr/share/doc" "$root/usr/share/man" "$root/usr/share/info" \
    "$root/usr/share/lintian" "$root/usr/share/bug" "$root/usr/share/locale"
rm -f "$root"/usr/lib/python3.11/lib-dynload/{_test,_xxtest,xxlimited,nis.,_ctypes_test}*.so
rm -rf "$root/usr/lib/python3.11/idlelib" "$root/usr/lib/python3.11/tkinter" \
    "$root/usr/lib/python3.11/turtledemo"
ln -sf python3.11 "$root/usr/bin/python3"
# Wheels only, for the image's own Python (the same Debian 12 CPython 3.11 as the builder's),
# with Debian's pip where it is installed, else a throwaway venv's (ensurepip); scripts
# (uvicorn) then get a `#!/usr/bin/python3.11` line, which the image has.
if [[ ! -d "$cache/opt" ]]; then
    echo "mlflow-runtime/build.sh: installing requirements.txt" >&2
    pip=(/usr/bin/python3.11 -m pip)
    if ! "${pip[@]}" --version >/dev/null 2>&1; then
        /usr/bin/python3.11 -m venv "$work/venv"
        pip=("$work/venv/bin/python" -m pip)
    fi
    "${pip[@]}" install --quiet --disable-pip-version-check --no-compile \
        --only-binary=:all: --target "$work/opt-lib" -r "$src/requirements.txt" >&2
    sed -i '1s|^#!.*python.*$|#!/usr/bin/python3.11|' "$work/opt-lib/bin/"*
    mkdir -p "$cache/opt.tmp"
    mv "$work/opt-lib/bin" "$cache/opt.tmp/bin"
    mv "$work/opt-lib" "$cache/opt.tmp/lib"
    mv "$cache/opt.tmp" "$cache/opt"
fi
mkdir -p "$root/opt/mlflow" "$root/opt/sluice"
cp -a "$cache/opt/." "$root/opt/mlflow/"
cp "$src/init.py" "$root/opt/sluice/init.py"
cp "$src/Containerfile" "$work/Containerfile"
echo "mlflow-runtime/build.sh: building $tag on $base_id" >&2
"${podman[@]}" build --pull=never --quiet --label "dev.sluice.mlflow-runtime-hash=$hash" \
    -t "$tag" -f "$work/Containerfile" "$work" >&2
"${podman[@]}" image inspect --format '{{.Id}}' "$tag"
