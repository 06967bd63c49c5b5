#!/usr/bin/env bash
# Embeddings per second of `inference-server serve` (release build, all-MiniLM-L6-v2, candle,
# micro-batching) against sentence-transformers on the same model and machine, at 1, 8 and 32
# concurrent connections, one text per request, the same wrk load on both.
#
#   bash inference-server/bench/serve-embeddings.sh        # prints a Markdown table
#   DURATION=30s bash inference-server/bench/serve-embeddings.sh
#
# The baseline is bench/st_server.py: SentenceTransformer.encode() behind Python's threading
# HTTP server, same request and answer shape. Installs sentence-transformers (CPU torch) into
# .venv on first run; fetches the model with tests/fetch-models.sh. Not run by CI.
source "$(dirname "$0")/serve-common.sh"
bench_pip sentence-transformers==6.2.0
bash inference-server/tests/fetch-models.sh >&2
MODEL="${SLUICE_MODEL_CACHE:-$HOME/.cache/sluice/models}/all-minilm-l6-v2"
mkdir -p "$WORK/minilm"
cat > "$WORK/minilm/sluice-model.yaml" <<YAML
name: all-minilm-l6-v2
format: safetensors
task: llm/v1/embeddings
files: {model: $MODEL/model.safetensors, tokenizer: $MODEL/tokenizer.json, config: $MODEL/config.json}
YAML
SERVE=$(port); ST=$(port)
SLUICE_LOG=warn "$BIN" serve --model-dir "$WORK/minilm" --port "$SERVE" --max-batch 32 & PIDS+=($!)
"$PY" "$BENCH/st_server.py" "$MODEL" "$ST" & PIDS+=($!)
wait_ok "http://127.0.0.1:$SERVE/health"
BODY='{"input": "A man is eating a piece of bread while the sun sets over the quiet harbour."}'
until curl -sf -X POST -H 'Content-Type: application/json' -d "$BODY" "http://127.0.0.1:$ST/v1/embeddings" >/dev/null; do sleep 0.5; done
echo "| connections | serve emb/s | sentence-transformers emb/s | ratio |"
echo "|---|---|---|---|"
for c in 1 8 32; do
  s=$(rps "http://127.0.0.1:$SERVE/v1/embeddings" "$c" "$BODY")
  p=$(rps "http://127.0.0.1:$ST/v1/embeddings" "$c" "$BODY")
  echo "| $c | $s | $p | $(awk -v a="$s" -v b="$p" 'BEGIN {printf "%.2f", a / b}') |"
done
echo
echo "machine: $(machine); wrk -t1 -c{1,8,32} -d$DURATION; one 16-token text per request"
