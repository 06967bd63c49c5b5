#!/usr/bin/env bash
# Gateway benchmark: the sluice gateway against nginx (split_clients weighted upstream) and
# HAProxy (weighted backends), the same 90/10 split over the same two upstream servers, the same
# load generator (wrk), one after another in one run. A direct run to the upstream is the floor.
#
#   bash inference-server/bench/gateway.sh            # writes docs/benchmarks/gateway.md
#   DURATION=20s CONNECTIONS=64 bash inference-server/bench/gateway.sh
#
# Needs wrk, nginx and haproxy (apt-get install wrk nginx-light haproxy). Loopback only.
# Build, cleanup, free ports, the machine line: shared with the other benchmarks.
source "$(dirname "$0")/serve-common.sh"
CONNECTIONS=${CONNECTIONS:-50}
THREADS=${THREADS:-2}
OUT=${OUT:-docs/benchmarks/gateway.md}
for tool in nginx haproxy; do
  command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install nginx-light haproxy)" >&2; exit 1; }
done
U1=$(port); U2=$(port); NGX=$(port); HAP=$(port); GW=$(port); ADMIN=$(port)
source inference-server/bench/peers.sh
upstream_conf "$WORK/upstream.conf" "$WORK" "$U1" "$U2"
nginx -c "$WORK/upstream.conf" -p "$WORK" & PIDS+=($!)
nginx_split_conf "$WORK/proxy.conf" "$WORK" "$NGX" "$U1" "$U2" "worker_processes 2;"
nginx -c "$WORK/proxy.conf" -p "$WORK" & PIDS+=($!)
haproxy_split_cfg "$WORK/haproxy.cfg" "$HAP" "$U1" "$U2" 2
haproxy -f "$WORK/haproxy.cfg" -db & PIDS+=($!)
split_endpoint "$WORK/endpoint.yaml"
SLUICE_LOG=warn "$BIN" gateway --standalone "$WORK/endpoint.yaml" --listen "127.0.0.1:$GW" \
  --admin-listen "127.0.0.1:$ADMIN" --upstream "a=127.0.0.1:$U1" --upstream "b=127.0.0.1:$U2" \
  --work-dir "$WORK/gw" > "$WORK/gw.out" & PIDS+=($!)

export BODY='{"inputs": [[5.1, 3.5, 1.4, 0.2]]}'
for p in $U1 $NGX $HAP; do
  for _ in $(seq 100); do curl -sf -o /dev/null -X POST "http://127.0.0.1:$p/" && break; sleep 0.05; done
done
for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$ADMIN/readyz" && break; sleep 0.05; done

# One run: requests/s, p50 and p99 in ms (wrk --latency).
run() {
  local url=$1
  wrk -t"$THREADS" -c"$CONNECTIONS" -d2s -s "$BENCH/post.lua" "$url" >/dev/null # warm-up
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -s "$BENCH/post.lua" "$url" > "$WORK/run.txt"
  local rps p50 p99 errors
  rps=$(awk '/Requests\/sec/ {print $2}' "$WORK/run.txt")
  p50=$(awk '$1=="50%" {print $2}' "$WORK/run.txt")
  p99=$(awk '$1=="99%" {print $2}' "$WORK/run.txt")
  errors=$(awk '/Non-2xx/ {print $NF} /Socket errors/ {print $0}' "$WORK/run.txt" | tr '\n' ' ')
  echo "$rps $(ms "$p50") $(ms "$p99") ${errors:-none}"
}
ms() { python3 -c "
import re,sys; v=sys.argv[1]; n=float(re.match(r'[0-9.]+',v).group()); u=v[len(re.match(r'[0-9.]+',v).group()):]
print(round(n*{'us':0.001,'ms':1,'s':1000}[u],3))" "$1"; }

read -r D_RPS D_P50 D_P99 D_ERR < <(run "http://127.0.0.1:$U1/")
read -r N_RPS N_P50 N_P99 N_ERR < <(run "http://127.0.0.1:$NGX/serving-endpoints/ep/invocations")
read -r H_RPS H_P50 H_P99 H_ERR < <(run "http://127.0.0.1:$HAP/serving-endpoints/ep/invocations")
read -r S_RPS S_P50 S_P99 S_ERR < <(run "http://127.0.0.1:$GW/serving-endpoints/ep/invocations")
SPLIT=$(curl -s "http://127.0.0.1:$ADMIN/metrics" | awk -F' ' '/^sluice_gateway_requests_total.*code="2xx"/ {split($1,a,"entity=\""); split(a[2],b,"\""); n[b[1]]=$2} END {t=n["a"]+n["b"]; if (t>0) printf "%.2f%% b", 100*n["b"]/t}')

ratio() { python3 -c "print(f'{float($1)/float($2):.2f}')"; }
mkdir -p "$(dirname "$OUT")"
{
  echo "# Gateway benchmark"
  echo
  echo "Command: \`bash inference-server/bench/gateway.sh\` (DURATION=$DURATION, CONNECTIONS=$CONNECTIONS, THREADS=$THREADS)."
  echo "Machine: $(machine); wrk, proxies and upstream share the cores, so compare ratios, not absolute numbers."
  echo "Date: $(date -u +%Y-%m-%dT%H:%MZ). Upstream: two nginx servers answering a fixed 70-byte JSON body; every proxy splits 90/10 between them."
  echo
  echo "| target | requests/s | p50 ms | p99 ms | errors |"
  echo "|---|---|---|---|---|"
  echo "| upstream direct (floor) | $D_RPS | $D_P50 | $D_P99 | $D_ERR |"
  echo "| nginx split_clients | $N_RPS | $N_P50 | $N_P99 | $N_ERR |"
  echo "| HAProxy weighted | $H_RPS | $H_P50 | $H_P99 | $H_ERR |"
  echo "| sluice gateway | $S_RPS | $S_P50 | $S_P99 | $S_ERR |"
  echo
  echo "- sluice / nginx throughput: **$(ratio "$S_RPS" "$N_RPS")**; p99 sluice / nginx: **$(ratio "$S_P99" "$N_P99")**"
  echo "- sluice / HAProxy throughput: **$(ratio "$S_RPS" "$H_RPS")**; p99 sluice / HAProxy: **$(ratio "$S_P99" "$H_P99")**"
  echo "- split measured by the gateway's own counters: $SPLIT"
} > "$OUT"
cat "$OUT"
