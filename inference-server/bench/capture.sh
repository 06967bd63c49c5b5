#!/usr/bin/env bash
# Capture benchmark: requests straight to a model vs. through `inference-server capture` in front
# of the same model, at 4 KiB and 64 KiB request bodies, with the same load generator (wrk).
#
#   bash inference-server/bench/capture.sh                   # prints a Markdown table
#   DURATION=20s CONNECTIONS=64 bash inference-server/bench/capture.sh
#   BIN=/path/to/inference-server bash inference-server/bench/capture.sh   # skip the build
#
# The "model" is nginx answering a fixed prediction body (it reads and discards the request
# body): the fastest possible model, so every cost of the sidecar shows. Three ways in:
# straight to the model; through the sidecar with capture off (`--sampling-fraction 0`: the
# proxy hop alone); through the sidecar recording every request into a local table. Throughput
# comes from a run with CONNECTIONS connections; latency from a run with one connection (no
# queueing). Needs wrk and nginx (apt-get install wrk nginx-light). Loopback only.
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-50}
THREADS=${THREADS:-2}
for tool in wrk nginx; do
  command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install wrk nginx-light)" >&2; exit 1; }
done
if [ -z "${BIN:-}" ]; then
  cargo build --release -p inference-server --bin inference-server >&2
  BIN=target/release/inference-server
fi
WORK=$(mktemp -d)
PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
MODEL=$(port); CAPTURE=$(port); PROXY=$(port)
ANSWER='{"predictions": [{"label": 0, "probabilities": [0.98, 0.02, 0.0]}]}'

mkdir -p "$WORK/body"
cat > "$WORK/model.conf" <<CONF
worker_processes 1; daemon off; pid $WORK/model.pid; error_log $WORK/model.err warn;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000; client_max_body_size 1m;
  client_body_buffer_size 128k; client_body_temp_path $WORK/body;
  server { listen 127.0.0.1:$MODEL;
    location / { default_type application/json; return 200 '$ANSWER'; } }
}
CONF
nginx -c "$WORK/model.conf" -p "$WORK" & PIDS+=($!)

sidecar() { # port sampling-fraction name
  "$BIN" capture --listen "127.0.0.1:$1" --upstream "127.0.0.1:$MODEL" --sampling-fraction "$2" \
    --table "$WORK/table-$3" --spool-dir "$WORK/spool-$3" \
    --endpoint bench --entity bench-1 --model bench --model-version 1 & PIDS+=($!)
}
sidecar "$CAPTURE" 1 on; CAPTURE_PID=$!
sidecar "$PROXY" 0 off
for p in "$CAPTURE" "$PROXY"; do
  for _ in $(seq 100); do
    curl -fs "http://127.0.0.1:$p/health" >/dev/null 2>&1 && break
    sleep 0.1
  done
done

# wrk script: POST a JSON body of SIZE bytes.
body_script() {
  cat > "$WORK/post-$1.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local pad = string.rep("x", $1 - 40)
wrk.body = '{"inputs": [[5.1, 3.5]], "pad": "' .. pad .. '"}'
LUA
  echo "$WORK/post-$1.lua"
}

# "requests/s p50_ms p99_ms" of one wrk run.
measure() { # url script connections threads
  wrk -t"$4" -c"$3" -d"$DURATION" --latency -s "$2" "$1" | awk '
    function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v }
    /^ +50%/ { p50 = ms($2) } /^ +99%/ { p99 = ms($2) } /^Requests\/sec/ { rps = $2 }
    END { printf "%s %.3f %.3f\n", rps, p50, p99 }'
}

rss_mib() { awk '/VmRSS/ { printf "%.0f", $2 / 1024 }' "/proc/$CAPTURE_PID/status"; }

echo "| body | req/s direct | req/s capture off | req/s capture on | on / off | on / direct | p50 / p99 direct | p50 / p99 off | p50 / p99 on |"
echo "|---|---|---|---|---|---|---|---|---|"
for size in 4096 65536; do
  script=$(body_script $size)
  results=()
  for target in "$MODEL" "$PROXY" "$CAPTURE"; do
    read -r rps _ _ <<<"$(measure "http://127.0.0.1:$target/invocations" "$script" "$CONNECTIONS" "$THREADS")"
    read -r _ p50 p99 <<<"$(measure "http://127.0.0.1:$target/invocations" "$script" 1 1)"
    results+=("$rps" "$p50" "$p99")
  done
  python3 - "$size" "${results[@]}" <<'PY'
import sys
size = int(sys.argv[1])
d, d50, d99, o, o50, o99, c, c50, c99 = map(float, sys.argv[2:])
print(f"| {size // 1024} KiB | {d:.0f} | {o:.0f} | {c:.0f} | {c / o:.2f} | {c / d:.2f} "
      f"| {d50:.3f} / {d99:.3f} ms | {o50:.3f} / {o99:.3f} ms | {c50:.3f} / {c99:.3f} ms |")
PY
done
sleep 2
written=$(curl -fs "http://127.0.0.1:$CAPTURE/metrics" | awk '/^sluice_capture_records_written_total/ { print $2 }')
dropped=$(curl -fs "http://127.0.0.1:$CAPTURE/metrics" | awk '/^sluice_capture_records_dropped_total/ { s += $2 } END { print s + 0 }')
echo
echo "capture RSS after the runs: $(rss_mib) MiB; rows written so far: ${written:-0}; dropped: $dropped"
echo "machine: $(nproc) CPUs ($(awk -F: '/model name/ { print $2; exit }' /proc/cpuinfo | sed 's/^ *//')), wrk -t$THREADS -c$CONNECTIONS -d$DURATION, model, sidecar and wrk on the same machine"
