#!/usr/bin/env bash
# Prints the project's one version (docs/releasing.md) after checking that every place that
# declares it agrees:
#   Cargo.toml                 [workspace.package] version
#   charts/sluice/Chart.yaml   version and appVersion
# With `--tag vX.Y.Z` (the release workflow passes the pushed tag) it also fails unless the tag
# is exactly `v<version>`. A disagreement exits 1 with a message naming the file and both values.
#
#   bash .ci/version.sh                 # 0.1.0
#   bash .ci/version.sh --tag v0.1.0    # 0.1.0
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

usage() { echo "usage: version.sh [--tag v<version>]" >&2; exit 2; }
tag=""
case $# in
    0) ;;
    2) [[ "$1" == "--tag" ]] || usage; tag=$2 ;;
    *) usage ;;
esac

fail() { echo "version.sh: $*" >&2; exit 1; }

cargo_toml="$root/Cargo.toml"
chart_yaml="$root/charts/sluice/Chart.yaml"

# `version = "..."` inside the [workspace.package] table only (member crates inherit it).
version=$(awk '
    /^\[/ { in_table = ($0 == "[workspace.package]"); next }
    in_table && /^version[ \t]*=/ {
        sub(/^version[ \t]*=[ \t]*"/, ""); sub(/".*$/, ""); print; exit
    }' "$cargo_toml")
[[ -n "$version" ]] || fail "Cargo.toml: no version in [workspace.package]"
# SemVer 2.0.0: MAJOR.MINOR.PATCH with an optional pre-release; build metadata is not used.
semver='^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(-[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?$'
[[ "$version" =~ $semver ]] || fail "Cargo.toml: workspace version '$version' is not SemVer (MAJOR.MINOR.PATCH[-PRERELEASE])"

# A top-level key of Chart.yaml, quotes removed.
chart_key() {
    awk -v key="$1" '
        $0 ~ "^" key ":" {
            sub("^" key ":[ \t]*", ""); sub(/[ \t]+#.*$/, ""); gsub(/["\047]/, ""); print; exit
        }' "$chart_yaml"
}
for key in version appVersion; do
    value=$(chart_key "$key")
    [[ "$value" == "$version" ]] \
        || fail "charts/sluice/Chart.yaml: $key is '${value}', Cargo.toml's workspace version is '$version'"
done

if [[ -n "$tag" && "$tag" != "v$version" ]]; then
    fail "tag '$tag' does not match Cargo.toml's workspace version: expected 'v$version'"
fi
echo "$version"
