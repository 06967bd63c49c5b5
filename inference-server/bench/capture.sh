#!/usr/bin/env bash
# Capture benchmark: requests straight to a model vs. through `inference-server capture` in front
# of the same model, with capture off, on (`--overflow drop-oldest`, the default) and on with
# `--overflow block` (no row ever dropped), at 4 KiB and 64 KiB request bodies, with the same load
# generator (wrk), against two models: the fastest possible one and one that spends 1 ms per
# request. Prints Markdown tables, the ratios, and every sidecar's written, dropped and refused
# counts.
#
#   bash inference-server/bench/capture.sh                   # prints the tables
#   DURATION=20s CONNECTIONS=64 bash inference-server/bench/capture.sh
#   BIN=/path/to/inference-server bash inference-server/bench/capture.sh   # skip the build
#   SOAK=300 bash inference-server/bench/capture.sh          # then a 5-minute soak, RSS every 30 s
#   MODELS=fast bash inference-server/bench/capture.sh       # only the no-work model
#
# Models: nginx answering a fixed prediction body (it reads and discards the request body), so
# every cost of the sidecar shows; and HAProxy running a Lua service that reads the body, sleeps
# 1 ms (`core.msleep`, which yields: HAProxy keeps serving other connections meanwhile) and
# answers the same body, a stand-in for a model that spends 1 ms per request. Throughput comes
# from a run with CONNECTIONS connections and counts only 2xx answers (a `block` sidecar may
# answer 503 when the table falls behind: those are refused, not served); latency from a run
# with one connection (no queueing). Needs wrk, nginx and haproxy
# (apt-get install wrk nginx-light haproxy). Loopback only.
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-50}
THREADS=${THREADS:-2}
SOAK=${SOAK:-0}
MODELS=${MODELS:-fast slow}   # fast: nginx, no work; slow: 1 ms per request
for tool in wrk nginx haproxy; do
  command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install wrk nginx-light haproxy)" >&2; exit 1; }
done
if [ -z "${BIN:-}" ]; then
  # What the images ship: the `dist` profile (release with fat LTO).
  cargo build --profile dist -p inference-server --bin inference-server >&2
  BIN=target/dist/inference-server
fi
WORK=$(mktemp -d)
PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ANSWER='{"predictions": [{"label": 0, "probabilities": [0.98, 0.02, 0.0]}]}'

FAST=$(port)
mkdir -p "$WORK/body"
cat > "$WORK/model.conf" <<CONF
worker_processes 1; daemon off; pid $WORK/model.pid; error_log $WORK/model.err warn;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000; client_max_body_size 1m;
  client_body_buffer_size 128k; client_body_temp_path $WORK/body;
  server { listen 127.0.0.1:$FAST;
    location / { default_type application/json; return 200 '$ANSWER'; } }
}
CONF
nginx -c "$WORK/model.conf" -p "$WORK" & PIDS+=($!)

SLOW=$(port)
cat > "$WORK/model.lua" <<LUA
local answer = '$ANSWER'
core.register_service("model", "http", function(applet)
  applet:receive()
  core.msleep(1)
  applet:set_status(200)
  applet:add_header("content-type", "application/json")
  applet:add_header("content-length", tostring(#answer))
  applet:start_response()
  applet:send(answer)
end)
LUA
cat > "$WORK/model.cfg" <<CFG
global
  lua-load $WORK/model.lua
  nbthread 1
  tune.bufsize 131072
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  option http-buffer-request
frontend model
  bind 127.0.0.1:$SLOW
  http-request use-service lua.model
CFG
haproxy -f "$WORK/model.cfg" -db >"$WORK/haproxy.log" 2>&1 & PIDS+=($!)

declare -A SIDECAR_PID
declare -A PORT
sidecar() { # name model-port sampling-fraction overflow
  local p; p=$(port)
  PORT[$1]=$p
  "$BIN" capture --listen "127.0.0.1:$p" --upstream "127.0.0.1:$2" --sampling-fraction "$3" \
    --overflow "$4" --table "$WORK/table-$1" --spool-dir "$WORK/spool-$1" \
    --endpoint bench --entity bench-1 --model bench --model-version 1 >/dev/null 2>"$WORK/$1.err" &
  PIDS+=($!)
  SIDECAR_PID[$1]=$!
}
for model in fast slow; do
  upstream=$FAST; [ "$model" = slow ] && upstream=$SLOW
  PORT[$model-direct]=$upstream
  sidecar "$model-off" "$upstream" 0 drop-oldest
  sidecar "$model-on" "$upstream" 1 drop-oldest
  sidecar "$model-block" "$upstream" 1 block
done
for p in "${PORT[@]}"; do
  for _ in $(seq 100); do
    curl -fs -o /dev/null -X POST -d '{}' "http://127.0.0.1:$p/invocations" 2>/dev/null && break
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

# "2xx-requests/s p50_ms p99_ms" of one wrk run.
measure() { # url script connections threads
  wrk -t"$4" -c"$3" -d"$DURATION" --latency -s "$2" "$1" | awk '
    function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v }
    function secs(v) { if (v ~ /ms,?$/) return v / 1000; if (v ~ /m,?$/) return v * 60; return v + 0 }
    /^ +50%/ { p50 = ms($2) } /^ +99%/ { p99 = ms($2) }
    / requests in / { total = $1; took = secs($4) }
    /Non-2xx or 3xx responses:/ { bad = $NF }
    END { printf "%.0f %.3f %.3f\n", (total - bad) / took, p50, p99 }'
}

metric() { # name metric -> the sum of its series
  curl -fs "http://127.0.0.1:${PORT[$1]}/metrics" | awk -v m="$2" '$1 == m || index($1, m "{") == 1 { s += $2 } END { print s + 0 }'
}
rss_mib() { awk '/VmRSS/ { printf "%.0f", $2 / 1024 }' "/proc/${SIDECAR_PID[$1]}/status"; }

for model in $MODELS; do
  echo
  if [ "$model" = fast ]; then echo "### Model: nginx, a fixed answer (no work)"; else echo "### Model: 1 ms per request (HAProxy + Lua)"; fi
  echo
  echo "| body | req/s direct | capture off | on (drop-oldest) | on (block) | drop-oldest / off | block / off | p50 / p99 off (1 conn) | p50 / p99 on | p50 / p99 block |"
  echo "|---|---|---|---|---|---|---|---|---|---|"
  for size in 4096 65536; do
    script=$(body_script $size)
    results=()
    for way in direct off on block; do
      url="http://127.0.0.1:${PORT[$model-$way]}/invocations"
      read -r rps _ _ <<<"$(measure "$url" "$script" "$CONNECTIONS" "$THREADS")"
      read -r _ p50 p99 <<<"$(measure "$url" "$script" 1 1)"
      results+=("$rps" "$p50" "$p99")
    done
    python3 - "$size" "${results[@]}" <<'PY'
import sys
size = int(sys.argv[1])
d, _, _, o, o50, o99, c, c50, c99, b, b50, b99 = map(float, sys.argv[2:])
print(f"| {size // 1024} KiB | {d:.0f} | {o:.0f} | {c:.0f} | {b:.0f} | {c / o:.2f} | {b / o:.2f} "
      f"| {o50:.3f} / {o99:.3f} ms | {c50:.3f} / {c99:.3f} ms | {b50:.3f} / {b99:.3f} ms |")
PY
  done
done

sleep 3
echo
echo "| sidecar | rows captured | rows written | rows dropped | requests refused (503) | RSS MiB |"
echo "|---|---|---|---|---|---|"
for name in $(for m in $MODELS; do echo "$m-on $m-block"; done); do
  echo "| $name | $(metric "$name" sluice_capture_records_captured_total) | $(metric "$name" sluice_capture_records_written_total) | $(metric "$name" sluice_capture_records_dropped_total) | $(metric "$name" sluice_capture_requests_refused_total) | $(rss_mib "$name") |"
done

if [ "$SOAK" -gt 0 ]; then
  echo
  echo "Soak: wrk -t$THREADS -c$CONNECTIONS for ${SOAK}s, 4 KiB bodies, 1 ms model, through the block sidecar; RSS (MiB) every 30 s:"
  script=$(body_script 4096)
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"${SOAK}s" -s "$script" "http://127.0.0.1:${PORT[slow-block]}/invocations" >"$WORK/soak.out" &
  soak=$!
  series=()
  for _ in $(seq $((SOAK / 30))); do sleep 30; series+=("$(rss_mib slow-block)"); done
  wait "$soak" || true
  echo "${series[*]}"
  grep -E "requests in|Non-2xx" "$WORK/soak.out" || true
  sleep 3
  echo "after the soak: written $(metric slow-block sluice_capture_records_written_total), dropped $(metric slow-block sluice_capture_records_dropped_total), refused $(metric slow-block sluice_capture_requests_refused_total)"
fi
echo
echo "machine: $(nproc) CPUs ($(awk -F: '/model name/ { print $2; exit }' /proc/cpuinfo | sed 's/^ *//')), wrk -t$THREADS -c$CONNECTIONS -d$DURATION; models, sidecars and wrk on the same machine"
