#!/usr/bin/env bash
# Runs every fuzz target for a bounded time (docs/fuzzing.md); exits non-zero when one finds an
# input that breaks its property.
#
#   SLUICE_FUZZ_SECONDS   seconds per target (default 20)
#   SLUICE_FUZZ_TARGETS   the targets to run, space-separated (default: all)
#   SLUICE_CACHE          where cargo-fuzz is installed (default ~/.cache/sluice)
#
# Each target starts from a fresh temporary copy of its committed seeds (corpus/<target>/) plus
# its regression inputs (regressions/<target>/), so what the fuzzer generates never lands in the
# repository. An input that breaks a property is written to fuzz/artifacts/<target>/; once the
# code is fixed, copy it to fuzz/regressions/<target>/ (the tests of sluice-protocol replay it).
set -euo pipefail
cd "$(dirname "$0")"

log() { printf '[fuzz] %s\n' "$*" >&2; }

CARGO_FUZZ_VERSION=0.13.2
seconds="${SLUICE_FUZZ_SECONDS:-20}"
targets="${SLUICE_FUZZ_TARGETS:-scoring_json scoring_csv openai_request sse_reassemble manifest usage_meter anthropic_stream pii}"
cache="${SLUICE_CACHE:-$HOME/.cache/sluice}/cargo-fuzz-$CARGO_FUZZ_VERSION"

if [ ! -x "$cache/bin/cargo-fuzz" ]; then
  log "installing cargo-fuzz $CARGO_FUZZ_VERSION into $cache"
  cargo install --quiet --locked --root "$cache" cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi
export PATH="$cache/bin:$PATH"

# cargo fuzz passes nightly-only flags to rustc (-Zsanitizer=address, -Cpasses=sancov-module,
# ...). A nightly toolchain is used when rustup has one; otherwise the stable compiler is told
# to accept them with RUSTC_BOOTSTRAP=1 (the switch the compiler's own build uses; the same
# compiler then behaves as a nightly of its version), so that CI needs no second toolchain.
toolchain=()
if command -v rustup >/dev/null 2>&1 && rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  toolchain=(+nightly)
else
  export RUSTC_BOOTSTRAP=1
fi
log "compiler: $(rustc "${toolchain[@]}" --version)${RUSTC_BOOTSTRAP:+ (RUSTC_BOOTSTRAP=1)}"

start=$(date +%s)
cargo "${toolchain[@]}" fuzz build >&2
log "built the targets in $(( $(date +%s) - start ))s"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
failed=()
summary=()
for target in $targets; do
  corpus="$work/corpus-$target"
  mkdir -p "$corpus"
  cp -R "corpus/$target/." "$corpus/"
  seeds=("$corpus")
  if [ -d "regressions/$target" ]; then
    seeds+=("regressions/$target")
  fi
  log "$target: ${seconds}s"
  # -timeout: an input that takes over 10 s is a failure (a hang); -rss_limit_mb: as is
  # libFuzzer's default, stated so that a change is deliberate.
  if cargo "${toolchain[@]}" fuzz run "$target" "${seeds[@]}" -- \
      -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      >"$work/$target.log" 2>&1; then
    status=ok
  else
    status=FAILED
    failed+=("$target")
    # The broken property (a panic's message), then libFuzzer's and cargo fuzz's report.
    grep -A 4 'panicked at' "$work/$target.log" | head -n 20 >&2 || true
    tail -n 40 "$work/$target.log" >&2
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/$target.log" | tail -n 1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$work/$target.log" | tail -n 1)
  found=$(find "$corpus" -type f | wc -l)
  summary+=("$(printf '%-16s %-7s %10s runs %8s exec/s %6s corpus files' \
    "$target" "$status" "${runs:-?}" "${rate:-?}" "$found")")
done

printf '[fuzz] %s\n' "${summary[@]}" >&2
if [ ${#failed[@]} -gt 0 ]; then
  log "failed: ${failed[*]} (inputs under fuzz/artifacts/; see docs/fuzzing.md)"
  exit 1
fi
log "passed: every target ran ${seconds}s without breaking a property"
