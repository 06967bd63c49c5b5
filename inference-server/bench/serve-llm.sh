#!/usr/bin/env bash
# Time to first token and aggregate tokens per second of `inference-server serve` against the
# llama.cpp server (llama-cpp-python[server], the engine people run a GGUF file with), on the
# same GGUF file and machine, the same prompts, at 1, 4 and 16 concurrent streamed chats, one
# run. Both greedy, 64 tokens per answer, both with every core (llama.cpp: --n_threads $(nproc)).
#
#   bash inference-server/bench/serve-llm.sh                  # prints a Markdown table
#   BIN=target/release/inference-server bash inference-server/bench/serve-llm.sh
#   QUANT=Q4_0 bash inference-server/bench/serve-llm.sh      # the file requantised first
#
# The model is SmolLM2-135M-Instruct Q4_1 (tests/fetch-models.sh); QUANT other than Q4_1 makes
# a file of that type from it with llama.cpp's quantiser (tests/llama_cpp/requantize.py). The
# llama.cpp server's extras are installed into .venv-llama (made by .ci/setup) on first run.
# Both servers get a 10-minute request deadline, so queued requests are measured, not refused.
# Not run by CI.
source "$(dirname "$0")/serve-common.sh"
LLAMA=.venv-llama/bin/python
[ -x "$LLAMA" ] || { echo "no .venv-llama: run .ci/setup first" >&2; exit 1; }
"$LLAMA" -m pip install --quiet --disable-pip-version-check "llama-cpp-python[server]==0.3.36" >&2
bash inference-server/tests/fetch-models.sh >&2
MODEL="${SLUICE_MODEL_CACHE:-$HOME/.cache/sluice/models}/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"
REQUESTS=${REQUESTS:-32}
MAX_TOKENS=${MAX_TOKENS:-64}
QUANT=${QUANT:-Q4_1}
mkdir -p "$WORK/model"
if [ "$QUANT" = Q4_1 ]; then
  ln -s "$MODEL" "$WORK/model/model.gguf"
else
  "$LLAMA" inference-server/tests/llama_cpp/requantize.py "$MODEL" "$WORK/model/model.gguf" "$QUANT" 2>/dev/null
  MODEL="$WORK/model/model.gguf"
fi
SERVE=$(port); LLAMACPP=$(port)
SLUICE_LOG=warn "$BIN" serve --model-dir "$WORK/model" --declared-format gguf --port "$SERVE" \
  --max-batch 16 --request-timeout 600s & PIDS+=($!)
"$LLAMA" -m llama_cpp.server --model "$MODEL" --host 127.0.0.1 --port "$LLAMACPP" \
  --n_threads "$(nproc)" --n_ctx 4096 >"$WORK/llama.log" 2>&1 & PIDS+=($!)
wait_ok "http://127.0.0.1:$SERVE/health"
wait_ok "http://127.0.0.1:$LLAMACPP/v1/models"
echo "| concurrent chats | serve TTFT median / p90 (s) | llama.cpp TTFT median / p90 (s) | serve tokens/s | llama.cpp tokens/s | tokens/s ratio |"
echo "|---|---|---|---|---|---|"
for c in 1 4 16; do
  read -r s_med s_p90 s_tps _ < <("$PY" "$BENCH/llm_load.py" "http://127.0.0.1:$SERVE/v1" "$c" "$REQUESTS" "$MAX_TOKENS")
  read -r l_med l_p90 l_tps _ < <("$PY" "$BENCH/llm_load.py" "http://127.0.0.1:$LLAMACPP/v1" "$c" "$REQUESTS" "$MAX_TOKENS")
  echo "| $c | $s_med / $s_p90 | $l_med / $l_p90 | $s_tps | $l_tps | $(awk -v a="$s_tps" -v b="$l_tps" 'BEGIN {printf "%.2f", a / b}') |"
done
echo
echo "machine: $(machine); $REQUESTS streamed chats of $MAX_TOKENS tokens per level, greedy; SmolLM2-135M-Instruct $QUANT"
