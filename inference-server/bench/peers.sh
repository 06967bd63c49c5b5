# The peers the gateway is measured against, shared by gateway.sh and instructions.sh (sourced,
# not run): an nginx upstream with two servers standing for two entities' pods, nginx and HAProxy
# splitting 90/10 over them, and the gateway's ServingEndpoint with the same split. Each
# function writes one config file; the caller starts the process.
ANSWER='{"predictions": [{"label": 0, "probabilities": [0.98, 0.02, 0.0]}]}'

# upstream_conf FILE WORK U1 U2: nginx answering ANSWER on U1 and U2.
upstream_conf() {
  mkdir -p "$2/body-up"
  cat > "$1" <<CONF
worker_processes 1; daemon off; pid $2/up.pid; error_log $2/up.err warn;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000; client_body_temp_path $2/body-up;
  server { listen 127.0.0.1:$3; location / { default_type application/json; return 200 '$ANSWER'; } }
  server { listen 127.0.0.1:$4; location / { default_type application/json; return 200 '$ANSWER'; } }
}
CONF
}

# nginx_split_conf FILE WORK PORT U1 U2 PROCESSES: nginx split_clients 90/10 with upstream
# keepalive; PROCESSES is its main-context line (e.g. "worker_processes 2;").
nginx_split_conf() {
  mkdir -p "$2/body-proxy"
  cat > "$1" <<CONF
$6 daemon off; pid $2/proxy.pid; error_log $2/proxy.err warn;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000; client_body_temp_path $2/body-proxy;
  upstream a { server 127.0.0.1:$4; keepalive 256; }
  upstream b { server 127.0.0.1:$5; keepalive 256; }
  split_clients "\$request_id" \$entity { 90% a; * b; }
  server { listen 127.0.0.1:$3;
    location / { proxy_pass http://\$entity; proxy_http_version 1.1; proxy_set_header Connection "";
                 add_header served-model-name \$entity; } }
}
CONF
}

# haproxy_split_cfg FILE PORT U1 U2 THREADS: HAProxy weighted 90/10, connections reused.
haproxy_split_cfg() {
  cat > "$1" <<CONF
global
  nbthread $5
  maxconn 4000
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  http-reuse always
frontend fe
  bind 127.0.0.1:$2
  default_backend entities
backend entities
  balance random
  server a 127.0.0.1:$3 weight 90
  server b 127.0.0.1:$4 weight 10
CONF
}

# split_endpoint FILE: the ServingEndpoint the gateway routes by (entities a and b, 90/10).
split_endpoint() {
  cat > "$1" <<CONF
apiVersion: serving.sluice.dev/v1alpha1
kind: ServingEndpoint
metadata: {name: ep}
spec:
  servedEntities:
    - {name: a, model: m, version: 1}
    - {name: b, model: m, version: 2}
  trafficConfig:
    routes:
      - {servedEntityName: a, trafficPercentage: 90}
      - {servedEntityName: b, trafficPercentage: 10}
CONF
}
