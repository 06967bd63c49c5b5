#!/usr/bin/env bash
# Packages the chart as a release carries it: Chart.yaml's version and appVersion set to the
# release version, and the default values naming our two images by repository and digest, so
# `helm install` of the package pulls exactly the images the release built (no tag, nothing
# mutable). The release workflow and the tests (against the loopback registry) both run it.
#
#   charts/tools/package.sh --version <x.y.z> --operator <repository>@<digest> \
#       --inference-server <repository>@<digest> --out <dir> [--helm <helm binary>]
#
# Prints the path of the packaged chart (<dir>/sluice-<x.y.z>.tgz).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
usage="usage: package.sh --version V --operator REPO@DIGEST --inference-server REPO@DIGEST --out DIR [--helm HELM]"
version="" operator="" inference="" out="" helm=""
while (( $# > 0 )); do
    case "$1" in
        --version) version=${2:?$usage}; shift 2 ;;
        --operator) operator=${2:?$usage}; shift 2 ;;
        --inference-server) inference=${2:?$usage}; shift 2 ;;
        --out) out=${2:?$usage}; shift 2 ;;
        --helm) helm=${2:?$usage}; shift 2 ;;
        *) echo "package.sh: unknown argument $1; $usage" >&2; exit 2 ;;
    esac
done
[[ -n $version && -n $operator && -n $inference && -n $out ]] || { echo "$usage" >&2; exit 2; }
[[ $version =~ ^[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?$ ]] \
    || { echo "package.sh: --version $version is not a SemVer version (x.y.z)" >&2; exit 2; }
for image in "$operator" "$inference"; do
    [[ $image =~ ^[^@]+@sha256:[0-9a-f]{64}$ ]] \
        || { echo "package.sh: $image is not <repository>@sha256:<64 hex>" >&2; exit 2; }
done
[[ -n $helm ]] || helm=$(bash "$root/charts/tools/install-helm.sh")

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r "$root/charts/sluice" "$work/sluice"
# Only images.<component>.repository / .tag / .digest change; comments and order stay.
python3 - "$work/sluice/values.yaml" "$operator" "$inference" <<'PY'
import re
import sys

path, images = sys.argv[1], {"operator": sys.argv[2], "inferenceServer": sys.argv[3]}
lines = open(path).read().split("\n")
section = component = None
done = set()
for i, line in enumerate(lines):
    top = re.match(r"^(\w+):", line)
    if top:
        section, component = top.group(1), None
        continue
    if section != "images":
        continue
    child = re.match(r"^  (\w+):\s*$", line)
    if child:
        component = child.group(1) if child.group(1) in images else None
        continue
    field = re.match(r"^    (repository|tag|digest):", line)
    if component and field:
        repository, digest = images[component].split("@")
        value = {"repository": repository, "tag": '""', "digest": digest}[field.group(1)]
        lines[i] = f"    {field.group(1)}: {value}"
        done.add((component, field.group(1)))
missing = {(c, f) for c in images for f in ("repository", "tag", "digest")} - done
if missing:
    sys.exit(f"package.sh: values.yaml has no images.{sorted(missing)[0][0]}.{sorted(missing)[0][1]}")
open(path, "w").write("\n".join(lines))
PY
mkdir -p "$out"
"$helm" lint --strict "$work/sluice" >&2
"$helm" package "$work/sluice" --version "$version" --app-version "$version" \
    --destination "$out" >&2
echo "$out/sluice-$version.tgz"
