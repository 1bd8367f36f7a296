#!/usr/bin/env bash
# Runs each fuzz target (fuzz/fuzz_targets) for a bounded time with libFuzzer, starting
# from the committed seed corpus (frames captured from a real Ceph monitor, see
# msgr/tests/golden_capture.rs). Any crash, panic, leak or timeout fails the run; the
# crashing input is left under fuzz/artifacts/TARGET/. Prints executions per target.
# Usage: ci/fuzz.sh      Environment: FUZZ_SECS (per target, default 60)
set -euo pipefail
cd "$(dirname "$0")/.."
. ci/lib.sh
need_rust
apt_install gcc g++ libc6-dev
if ! cargo fuzz --version >/dev/null 2>&1; then
  log "installing cargo-fuzz"
  cargo install cargo-fuzz --locked --version 0.13.2
fi
secs=${FUZZ_SECS:-60}
# `-s none`: libFuzzer's coverage without a sanitizer, which works on the stable toolchain.
cargo fuzz build -s none --fuzz-dir fuzz
for target in frame_decoder server_handshake; do
  work=$(mktemp -d)
  log "fuzz $target for ${secs}s"
  # New inputs go to the scratch corpus (first directory); the committed one is read only.
  if ! cargo fuzz run -s none --fuzz-dir fuzz "$target" "$work" "fuzz/corpus/$target" -- \
      -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 >"$work.log" 2>&1; then
    tail -n 40 "$work.log"
    log "fuzz $target FAILED: crashing input in fuzz/artifacts/$target/"
    exit 1
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work.log" | tail -n1)
  cov=$(grep -o 'cov: [0-9]*' "$work.log" | tail -n1)
  echo "fuzz $target: ${runs:-?} executions in ${secs} s, $cov, 0 crashes"
  rm -rf "$work" "$work.log"
done
