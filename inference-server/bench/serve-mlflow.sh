#!/usr/bin/env bash
# Requests per second of `inference-server serve` on a trivial model (the iris ONNX fixture,
# tract) against `mlflow models serve` of an equivalent trivial pyfunc (bench/trivial_pyfunc.py,
# numpy argmax over the four columns), the same `/invocations` dataframe_split body, the same
# wrk load (CONNECTIONS, default 8).
#
#   bash inference-server/bench/serve-mlflow.sh           # prints a Markdown table
#
# Installs mlflow into .venv on first run. mlflow serves with its defaults (--env-manager local).
# Not run by CI.
source "$(dirname "$0")/serve-common.sh"
CONNECTIONS=${CONNECTIONS:-8}
bench_pip mlflow==3.17.2
mkdir -p "$WORK/iris"
cp inference-server/tests/fixtures/iris.onnx "$WORK/iris/"
cat > "$WORK/iris/sluice-model.yaml" <<YAML
format: onnx
task: predict
files: {model: iris.onnx}
YAML
"$PY" "$BENCH/trivial_pyfunc.py" "$WORK/pyfunc" >&2
SERVE=$(port); MLF=$(port)
SLUICE_LOG=warn "$BIN" serve --model-dir "$WORK/iris" --port "$SERVE" & PIDS+=($!)
PATH="$PWD/.venv/bin:$PATH" .venv/bin/mlflow models serve -m "$WORK/pyfunc" --env-manager local \
  --host 127.0.0.1 --port "$MLF" >"$WORK/mlflow.log" 2>&1 & PIDS+=($!)
wait_ok "http://127.0.0.1:$SERVE/health"
wait_ok "http://127.0.0.1:$MLF/ping"
BODY='{"dataframe_split": {"columns": ["sepal_length", "sepal_width", "petal_length", "petal_width"], "data": [[5.1, 3.5, 1.4, 0.2]]}}'
s=$(rps "http://127.0.0.1:$SERVE/invocations" "$CONNECTIONS" "$BODY")
m=$(rps "http://127.0.0.1:$MLF/invocations" "$CONNECTIONS" "$BODY")
echo "| server | requests/s |"
echo "|---|---|"
echo "| inference-server serve (iris ONNX) | $s |"
echo "| mlflow models serve (trivial pyfunc) | $m |"
echo "| ratio | $(awk -v a="$s" -v b="$m" 'BEGIN {printf "%.1f", a / b}') |"
echo
echo "machine: $(machine); wrk -t1 -c$CONNECTIONS -d$DURATION"
