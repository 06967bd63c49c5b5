# Shared by serve-embeddings.sh and serve-mlflow.sh (sourced, not run): the release build,
# the bench Python packages, free ports, waiting for a server, and a wrk run that prints
# requests per second.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
DURATION=${DURATION:-10s}
BENCH=inference-server/bench
PY=.venv/bin/python
command -v wrk >/dev/null || { echo "missing wrk (apt-get install wrk)" >&2; exit 1; }
[ -x "$PY" ] || { echo "no .venv: run .ci/setup first" >&2; exit 1; }
if [ -z "${BIN:-}" ]; then
  # What the images ship: the `dist` profile (release with fat LTO).
  cargo build --profile dist -p inference-server --bin inference-server >&2
  BIN=target/dist/inference-server
fi
WORK=$(mktemp -d)
PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

# Installs pinned benchmark-only packages into .venv (not part of .ci/setup).
bench_pip() { "$PY" -m pip install --quiet --disable-pip-version-check "$@" >&2; }
port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# wait_ok URL: until it answers 200 (at most 5 minutes).
wait_ok() {
  for _ in $(seq 1 3000); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$1")" = 200 ] && return 0
    sleep 0.1
  done
  echo "$1 never answered 200" >&2; exit 1
}
# rps URL CONNECTIONS BODY: requests per second of wrk POSTing BODY; fails on any non-2xx.
rps() {
  local out
  out=$(BODY="$3" wrk -t1 -c"$2" -d"$DURATION" -s "$BENCH/post.lua" "$1")
  if grep -q "Non-2xx" <<<"$out"; then echo "$out" >&2; echo "non-2xx answers from $1" >&2; exit 1; fi
  awk '/Requests\/sec/ {print $2}' <<<"$out"
}
machine() { echo "$(nproc) cores, $(awk '/model name/ {$1=$2=$3=""; print; exit}' /proc/cpuinfo | xargs), $(free -g | awk '/Mem/ {print $2}') GiB"; }
