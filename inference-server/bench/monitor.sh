#!/usr/bin/env bash
# Monitor benchmark: one full refresh of `inference-server monitor` over a synthetic inference
# table of ROWS requests, against DuckDB running the same aggregations on the same files (see
# bench/monitor/duckdb_peer.py), both limited to the same memory and 2 threads. Prints wall time
# and peak RSS of each and the ratios.
#
#   bash inference-server/bench/monitor.sh                       # 10 million rows
#   ROWS=1000000 bash inference-server/bench/monitor.sh
#   BIN=target/release/inference-server bash inference-server/bench/monitor.sh   # skip the build
#
# Needs .venv (bash .ci/setup: duckdb, pyarrow, numpy) and GNU time (/usr/bin/time).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROWS=${ROWS:-10000000}
DAYS=${DAYS:-10}
MEMORY_MIB=${MEMORY_MIB:-512}
if [ -z "${BIN:-}" ]; then
  cargo build --profile dist -p inference-server --bin inference-server >&2
  BIN=target/dist/inference-server
fi
WORK=${WORK:-$(mktemp -d)}
trap 'rm -rf "$WORK"' EXIT
PY=.venv/bin/python
echo "[bench] writing $ROWS rows over $DAYS days to $WORK" >&2
$PY inference-server/bench/monitor/make_table.py "$WORK/fraud_payload" "$ROWS" "$DAYS"
du -sh "$WORK/fraud_payload" >&2
CONFIG='{"granularities": ["1 hour", "1 day"], "features": [{"name": "amount"}, {"name": "merchant", "kind": "categorical"}], "slicingExprs": ["served_entity"]}'
measure() { # label, command...
  local label=$1; shift
  /usr/bin/time -f "%e %M" -o "$WORK/time" "$@" > "$WORK/out" 2> "$WORK/err" || { cat "$WORK/err" >&2; exit 1; }
  read -r seconds kib < "$WORK/time"
  echo "$label $seconds $((kib / 1024))"
}
ours=$(measure sluice "$BIN" monitor --table "$WORK/fraud_payload" --config "$CONFIG" \
  --work-dir "$WORK/tmp" --memory-limit-mib "$MEMORY_MIB" --full)
theirs=$(measure duckdb $PY inference-server/bench/monitor/duckdb_peer.py "$WORK/fraud_payload" "${MEMORY_MIB}MB")
read -r _ s_sec s_mib <<< "$ours"
read -r _ d_sec d_mib <<< "$theirs"
echo
echo "| | wall s | peak RSS MiB |"
echo "|---|---|---|"
echo "| sluice monitor | $s_sec | $s_mib |"
echo "| DuckDB $($PY -c 'import duckdb; print(duckdb.__version__)') | $d_sec | $d_mib |"
echo
awk -v a="$s_sec" -v b="$d_sec" -v c="$s_mib" -v d="$d_mib" \
  'BEGIN { printf "time ratio (DuckDB / sluice, >1: sluice faster): %.2f; memory ratio (sluice / DuckDB): %.2f\n", b / a, c / d }'
