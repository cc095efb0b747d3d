#!/usr/bin/env bash
# Fuzz smoke run for CI: each cargo-fuzz target for a few seconds from the committed seeds.
# Fails (non-zero exit) when a target crashes, panics, hangs or runs out of memory; the input is
# left in fuzz/artifacts/<target>/ (reproduce with the smoke run's build flags, so nothing is
# rebuilt: cargo +nightly fuzz run --codegen-units 16 -s none <target> <that file>).
# Long runs and their results: docs/fuzzing.md.
#
# Usage: fuzz/smoke.sh [SECONDS_PER_TARGET]   (default 15; four targets)
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-15}"
targets=(message_parse decrypt config_load query_parse)

if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz/smoke.sh: installing the nightly toolchain (cargo-fuzz needs it)" >&2
  rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz/smoke.sh: installing cargo-fuzz (about a minute)" >&2
  cargo install cargo-fuzz --locked
fi

# All targets at once: release with debug assertions and overflow checks, 16 codegen units and
# no sanitizer. wxmp's fuzzed code (XML, crypto, config, query string) has no `unsafe`, so
# AddressSanitizer finds nothing there that a panic would not; the dependencies' `unsafe` (aes,
# base64) had it in the long runs of docs/fuzzing.md (10 million inputs each for decrypt and
# message_parse). Without it, and with 16 units instead of cargo-fuzz's 1, the build takes ~70 s
# instead of ~150 s from clean on 2 cores and each second runs 3-5 times as many inputs
# (measured 2026-12-02).
build_flags=(--codegen-units 16 --sanitizer none)
cargo +nightly fuzz build "${build_flags[@]}"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
for t in "${targets[@]}"; do
  mkdir -p "$work/$t"
  echo "fuzz/smoke.sh: $t for ${secs}s"
  # New inputs go to the scratch folder; the committed seeds in corpus/$t are only read.
  if ! cargo +nightly fuzz run "${build_flags[@]}" "$t" "$work/$t" "corpus/$t" -- \
    -max_total_time="$secs" -timeout=10 -print_final_stats=1 >"$work/$t.log" 2>&1; then
    tail -n 60 "$work/$t.log" >&2
    echo "fuzz/smoke.sh: $t FAILED; the input is in fuzz/artifacts/$t/" >&2
    exit 1
  fi
  grep -E '^stat::number_of_executed_units' "$work/$t.log" | sed "s/^/  $t /"
done
echo "fuzz/smoke.sh: all targets ran without a crash"
