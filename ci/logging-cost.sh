#!/usr/bin/env bash
# What the logs cost a quiet messenger (debug_ms 0): the same source built twice, as is
# and with every debug_ms test and log site compiled out, then user-space instructions
# per 64-byte round trip of each counted by callgrind (ci/callgrind-rtt.sh) and their
# round trips per second by `msgr bench` in one run, alternating.
#
# Usage: ci/logging-cost.sh [SIZE]   (default 64). Takes two release builds (~5 min).
set -euo pipefail
cd "$(dirname "$0")/.."
. ci/lib.sh
size=${1:-64}
work=$(mktemp -d)
trap 'git worktree remove --force "$work/quiet" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT

log "build as is"
cargo build --release -q --bin msgr
cp target/release/msgr "$work/msgr-logs"

log "build with the log sites compiled out"
git worktree add -q --detach "$work/quiet" HEAD
# Uncommitted changes count too: copy the working tree's sources over.
git ls-files --cached --others --exclude-standard | tar -cf - -T - | tar -xf - -C "$work/quiet"
(
  cd "$work/quiet"
  # Every gate on debug_ms becomes `false`: the compiler drops the sites entirely.
  sed -i -E 's/if \$m\.settings\.debug_ms >= [0-9]+/if false/' msgr/src/messenger/log.rs
  grep -rlE 'settings\.debug_ms >= [0-9]+' msgr/src | xargs sed -i -E 's/[A-Za-z_.]*settings\.debug_ms >= [0-9]+/false/g'
  if grep -rnE 'debug_ms >= ' msgr/src; then echo "log gates left" >&2; exit 1; fi
  CARGO_TARGET_DIR="$work/target" cargo build --release -q --bin msgr
)
cp "$work/target/release/msgr" "$work/msgr-quiet"

for b in quiet logs; do
  log "callgrind: $b"
  bash ci/callgrind-rtt.sh "$work/msgr-$b" "$size" | grep "per round trip"
done
for round in 1 2; do
  for b in quiet logs; do
    log "msgr bench round $round: $b"
    "$work/msgr-$b" bench --size "$size" --depth 16 --duration 5 --baseline none | grep -E '^msgr '
  done
done
