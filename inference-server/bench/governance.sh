#!/usr/bin/env bash
# What governing calls costs the gateway: the same standalone gateway, the same upstream and the
# same load (wrk), one after another in one run:
#   open      no caller checks, no rate limits (the baseline);
#   auth      every call carries an API key, checked against the keys file (salted SHA-256);
#   limits    auth, plus two rate limits (calls per user, tokens per endpoint) counted in memory;
#   redis     auth, plus the same limits counted in a local redis-server (one Lua script per call).
# The limits are far above the load, so every call is admitted and all of them do the full work.
#
#   bash inference-server/bench/governance.sh        # writes docs/benchmarks/governance.md
#
# Needs wrk and redis-server (apt-get install wrk redis-server) and nginx for the upstream
# (nginx-light). Loopback only.
source "$(dirname "$0")/serve-common.sh"
CONNECTIONS=${CONNECTIONS:-50}
THREADS=${THREADS:-2}
OUT=${OUT:-docs/benchmarks/governance.md}
for tool in nginx redis-server; do
  command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install nginx-light redis-server)" >&2; exit 1; }
done
UP=$(port); REDIS=$(port)
ANSWER='{"predictions": [0], "usage": {"prompt_tokens": 4, "completion_tokens": 1}}'
mkdir -p "$WORK/nginx-up"
cat > "$WORK/upstream.conf" <<CONF
worker_processes 1; daemon off; pid $WORK/up.pid; error_log $WORK/up.err warn;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  client_body_temp_path $WORK/nginx-up;
  server { listen 127.0.0.1:$UP; location / { default_type application/json; return 200 '$ANSWER'; } }
}
CONF
nginx -c "$WORK/upstream.conf" -p "$WORK" & PIDS+=($!)
redis-server --port "$REDIS" --bind 127.0.0.1 --save "" --appendonly no --dir "$WORK" >/dev/null & PIDS+=($!)

endpoint() {
  cat <<CONF
apiVersion: serving.sluice.dev/v1alpha1
kind: ServingEndpoint
metadata: {name: ep}
spec:
  servedEntities:
    - {name: a, model: m, version: 1}
$1
CONF
}
endpoint "" > "$WORK/open.yaml"
endpoint "  aiGateway:
    rateLimits:
      - {calls: 100000000, key: user, renewalPeriod: minute}
      - {tokens: 1000000000000, key: endpoint, renewalPeriod: minute}" > "$WORK/limited.yaml"
KEY=$("$BIN" api-key create --principal bench --file "$WORK/keys.yaml" | tail -1)

# gateway NAME MANIFEST FLAGS...: starts one, prints its port.
gateway() {
  local name=$1 manifest=$2; shift 2
  local gw admin; gw=$(port); admin=$(port)
  SLUICE_LOG=warn "$BIN" gateway --standalone "$manifest" --listen "127.0.0.1:$gw" \
    --admin-listen "127.0.0.1:$admin" --upstream "a=127.0.0.1:$UP" --work-dir "$WORK/$name" "$@" \
    > "$WORK/$name.out" 2>&1 & PIDS+=($!)
  wait_ok "http://127.0.0.1:$admin/readyz"
  echo "$gw"
}
run() {
  local url=$1 token=$2
  BODY='{"inputs": [[1.0]]}' TOKEN=$token wrk -t"$THREADS" -c"$CONNECTIONS" -d2s -s "$BENCH/post-auth.lua" "$url" >/dev/null
  BODY='{"inputs": [[1.0]]}' TOKEN=$token wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -s "$BENCH/post-auth.lua" "$url" > "$WORK/run.txt"
  if grep -q "Non-2xx" "$WORK/run.txt"; then cat "$WORK/run.txt" >&2; echo "non-2xx answers from $url" >&2; exit 1; fi
  local rps p99
  rps=$(awk '/Requests\/sec/ {print $2}' "$WORK/run.txt")
  p99=$(awk '$1=="99%" {print $2}' "$WORK/run.txt")
  echo "$rps $(python3 -c "
import re,sys; v=sys.argv[1]; n=float(re.match(r'[0-9.]+',v).group()); u=v[len(re.match(r'[0-9.]+',v).group()):]
print(round(n*{'us':0.001,'ms':1,'s':1000}[u],3))" "$p99")"
}
for _ in $(seq 100); do curl -sf -o /dev/null -X POST "http://127.0.0.1:$UP/" && break; sleep 0.05; done

OPEN=$(gateway open "$WORK/open.yaml")
AUTH=$(gateway auth "$WORK/open.yaml" --api-keys-file "$WORK/keys.yaml")
LIMITS=$(gateway limits "$WORK/limited.yaml" --api-keys-file "$WORK/keys.yaml")
REDISGW=$(gateway redis "$WORK/limited.yaml" --api-keys-file "$WORK/keys.yaml" --rate-limit-redis "redis://127.0.0.1:$REDIS")
path=/serving-endpoints/ep/invocations
read -r O_RPS O_P99 < <(run "http://127.0.0.1:$OPEN$path" "")
read -r A_RPS A_P99 < <(run "http://127.0.0.1:$AUTH$path" "$KEY")
read -r L_RPS L_P99 < <(run "http://127.0.0.1:$LIMITS$path" "$KEY")
read -r R_RPS R_P99 < <(run "http://127.0.0.1:$REDISGW$path" "$KEY")

ratio() { python3 -c "print(f'{float($1)/float($2):.2f}')"; }
mkdir -p "$(dirname "$OUT")"
{
  echo "# Governance overhead: caller checks and rate limits"
  echo
  echo "Command: \`bash inference-server/bench/governance.sh\` (DURATION=$DURATION, CONNECTIONS=$CONNECTIONS, THREADS=$THREADS)."
  echo "Machine: $(machine); wrk, the gateways, nginx and Redis share the cores, so compare ratios, not absolute numbers."
  echo "Date: $(date -u +%Y-%m-%dT%H:%MZ). Upstream: nginx answering a fixed JSON body with a usage object; one standalone gateway per row, the same load on each in turn."
  echo
  echo "| gateway | requests/s | p99 ms | throughput vs open | p99 vs open |"
  echo "|---|---|---|---|---|"
  echo "| open: no checks, no limits | $O_RPS | $O_P99 | 1.00 | 1.00 |"
  echo "| auth: API key checked on every call | $A_RPS | $A_P99 | $(ratio "$A_RPS" "$O_RPS") | $(ratio "$A_P99" "$O_P99") |"
  echo "| auth + rate limits in memory (calls per user, tokens per endpoint) | $L_RPS | $L_P99 | $(ratio "$L_RPS" "$O_RPS") | $(ratio "$L_P99" "$O_P99") |"
  echo "| auth + rate limits in Redis | $R_RPS | $R_P99 | $(ratio "$R_RPS" "$O_RPS") | $(ratio "$R_P99" "$O_P99") |"
  echo
  echo "Where the cost goes: an API key is a salted SHA-256 per call; a rate-limited call also builds"
  echo "its budget keys (strings), takes one lock on the in-memory counters or one Redis round trip"
  echo "(a Lua script), and meters the answer byte by byte for the token budget."
  echo
  echo "Kubernetes tokens are not measured here (standalone gateways have no API server); their"
  echo "TokenReview and SubjectAccessReview answers are cached (\`--auth-cache-ttl\`), so a cached"
  echo "call costs a SHA-256 of the token and two cache lookups, the same order as an API key."
} > "$OUT"
cat "$OUT"
