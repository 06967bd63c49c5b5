#!/usr/bin/env bash
# Instructions per request: each proxy runs under callgrind (valgrind), a keep-alive client sends
# WARMUP requests, the counters are zeroed, REQUESTS more are sent, and the instructions the
# proxy's process executed for them are divided by REQUESTS. Instruction counts do not depend on
# what else the machine is doing, so a change to the hot path shows its effect without the noise
# of a wall-clock run (gateway.sh and capture.sh measure throughput).
#
#   bash inference-server/bench/instructions.sh          # writes docs/benchmarks/instructions.md
#   REQUESTS=5000 bash inference-server/bench/instructions.sh
#   BIN=/path/to/inference-server bash inference-server/bench/instructions.sh   # skip the build
#
# Targets, all in front of the same nginx upstream answering a fixed 70-byte JSON body: nginx
# (proxy_pass with keepalive, one worker, no master), HAProxy (one thread), the sluice gateway
# (standalone, a 90/10 split over two upstream servers), and the capture sidecar with capture
# off (sampling 0: the proxy hop alone) and on (every exchange recorded into a local table).
# Needs valgrind, nginx and haproxy (apt-get install valgrind nginx-light haproxy). Loopback only.
set -euo pipefail
cd "$(dirname "$0")/../.."
WARMUP=${WARMUP:-500}
REQUESTS=${REQUESTS:-2000}
OUT=${OUT:-docs/benchmarks/instructions.md}
for tool in valgrind callgrind_control nginx haproxy; do
  command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install valgrind nginx-light haproxy)" >&2; exit 1; }
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
U1=$(port); U2=$(port)
export BODY='{"inputs": [[5.1, 3.5, 1.4, 0.2]]}'
source inference-server/bench/peers.sh
upstream_conf "$WORK/upstream.conf" "$WORK" "$U1" "$U2"
nginx -c "$WORK/upstream.conf" -p "$WORK" & PIDS+=($!)

# send URL COUNT: COUNT POSTs over one keep-alive connection; fails on any non-2xx answer.
send() {
  python3 - "$1" "$2" <<'PY'
import http.client, os, sys, urllib.parse
url = urllib.parse.urlsplit(sys.argv[1]); count = int(sys.argv[2]); body = os.environ["BODY"]
connection = http.client.HTTPConnection(url.hostname, url.port, timeout=120)
for _ in range(count):
    connection.request("POST", url.path, body, {"Content-Type": "application/json"})
    answer = connection.getresponse(); answer.read()
    if answer.status // 100 != 2:
        sys.exit(f"{sys.argv[1]} answered {answer.status}")
PY
}

# measure NAME URL HEALTH_URL -- COMMAND...: instructions per request of COMMAND under callgrind.
measure() {
  local name=$1 url=$2 health=$3; shift 4
  valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.$name.%p" --trace-children=no \
    "$@" > "$WORK/$name.out" 2>&1 & local pid=$!
  PIDS+=("$pid")
  for _ in $(seq 600); do curl -fs -o /dev/null "$health" 2>/dev/null && break; sleep 0.2; done
  send "$url" "$WARMUP"
  callgrind_control -z "$pid" >/dev/null 2>&1
  send "$url" "$REQUESTS"
  callgrind_control -d "$pid" >/dev/null 2>&1
  sleep 0.5
  local total
  total=$(awk '/^summary:|^totals:/ {print $2; exit}' "$WORK/cg.$name.$pid.1")
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  echo "$name $((total / REQUESTS))"
}

NGX=$(port); HAP=$(port); GW=$(port); ADMIN=$(port); OFF=$(port); ON=$(port)
nginx_split_conf "$WORK/proxy.conf" "$WORK" "$NGX" "$U1" "$U2" "master_process off; worker_processes 1;"
haproxy_split_cfg "$WORK/haproxy.cfg" "$HAP" "$U1" "$U2" 1
split_endpoint "$WORK/endpoint.yaml"
sidecar() { # port sampling-fraction name
  echo "$BIN" capture --listen "127.0.0.1:$1" --upstream "127.0.0.1:$U1" --sampling-fraction "$2" \
    --table "$WORK/table-$3" --spool-dir "$WORK/spool-$3" \
    --endpoint bench --entity bench-1 --model bench --model-version 1
}
export SLUICE_LOG=warn
{
  measure nginx "http://127.0.0.1:$NGX/serving-endpoints/ep/invocations" "http://127.0.0.1:$NGX/" -- \
    nginx -c "$WORK/proxy.conf" -p "$WORK"
  measure haproxy "http://127.0.0.1:$HAP/serving-endpoints/ep/invocations" "http://127.0.0.1:$HAP/" -- \
    haproxy -f "$WORK/haproxy.cfg" -db
  measure gateway "http://127.0.0.1:$GW/serving-endpoints/ep/invocations" "http://127.0.0.1:$ADMIN/readyz" -- \
    "$BIN" gateway --standalone "$WORK/endpoint.yaml" --listen "127.0.0.1:$GW" \
    --admin-listen "127.0.0.1:$ADMIN" --upstream "a=127.0.0.1:$U1" --upstream "b=127.0.0.1:$U2" \
    --work-dir "$WORK/gw"
  # shellcheck disable=SC2046
  measure capture-off "http://127.0.0.1:$OFF/invocations" "http://127.0.0.1:$OFF/health" -- $(sidecar "$OFF" 0 off)
  # shellcheck disable=SC2046
  measure capture-on "http://127.0.0.1:$ON/invocations" "http://127.0.0.1:$ON/health" -- $(sidecar "$ON" 1 on)
} > "$WORK/results"

value() { awk -v n="$1" '$1 == n {print $2}' "$WORK/results"; }
ratio() { python3 -c "print(f'{$1 / $2:.2f}')"; }
mkdir -p "$(dirname "$OUT")"
{
  echo "# Instructions per request"
  echo
  echo "Command: \`bash inference-server/bench/instructions.sh\` (WARMUP=$WARMUP, REQUESTS=$REQUESTS)."
  echo "Machine: $(nproc) cores, $(awk '/model name/ {$1=$2=$3=""; print; exit}' /proc/cpuinfo | xargs); $(valgrind --version)."
  echo "Date: $(date -u +%Y-%m-%dT%H:%MZ). Each proxy runs alone under callgrind; one keep-alive client; the"
  echo "count is the proxy process's user-space instructions (system calls and the kernel's TCP work are"
  echo "not in it), so it does not move with machine load. Upstream: nginx answering a fixed 70-byte body."
  echo
  echo "| target | instructions/request | / nginx |"
  echo "|---|---|---|"
  for name in nginx haproxy gateway capture-off capture-on; do
    echo "| $name | $(value "$name") | $(ratio "$(value "$name")" "$(value nginx)") |"
  done
} > "$OUT"
cat "$OUT"
