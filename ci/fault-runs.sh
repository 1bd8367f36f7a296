#!/usr/bin/env bash
# Lossless sessions between two processes under faults, with the release binary:
#  1. 1,000,000 verified pings (a message each way per ping) with
#     ms_inject_socket_failures = 500 on both sides: nothing lost, duplicated, reordered
#     or corrupted, and at least 1,000 injected faults between the two processes.
#  2. kill -9 of the server and a restart on the same port: a lossless client gets the
#     remote reset and finishes; a lossy one gets a reset, dials again and finishes.
# Usage: ci/fault-runs.sh [MSGR_BINARY] [COUNT]
set -euo pipefail
cd "$(dirname "$0")/.."
. ci/lib.sh
bin=${1:-target/release/msgr}
count=${2:-1000000}
# SKIP_MILLION=1 runs only part 2 (for debugging the script).
skip_million=${SKIP_MILLION:-}
tmp=$(mktemp -d)
trap 'kill -9 "${SERVER_PID:-}" 2>/dev/null || true; kill "${PING_PID:-}" 2>/dev/null || true; rm -rf "$tmp"' EXIT
inject=(-o ms_inject_socket_failures=500 -o ms_initial_backoff=0.01 -o ms_max_backoff=0.2)

# --- 1. a million messages each way through injected faults -----------------------
if [ -z "$skip_million" ]; then
start_server "$tmp/serve.log" "$bin" "${inject[@]}" serve --bind 127.0.0.1:0 --policy lossless
log "lossless server at $SERVER_ADDR, $count verified pings, window 4, faults injected on both sides"
start=$(date +%s)
"$bin" "${inject[@]}" ping --connect "$SERVER_ADDR" --policy lossless --verify --count "$count" \
  --window 4 --size 64 --timeout 60 | tee "$tmp/ping.out"
secs=$(( $(date +%s) - start ))
# The server prints its count every 2 s; let it print once more after the last ping.
sleep 2.5
kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true
fault_total "posix $count pings in ${secs}s" "$tmp/ping.out" "$tmp/serve.log"
total=$FAULT_TOTAL
verified_ok "$count" "$tmp/ping.out" "posix $count pings" || exit 1
# Pings lost with a reset are sent again and would pass the check above, so a lossless
# session must show no reset of any kind, and the server must have answered each once.
if grep -q "^sessions:" "$tmp/ping.out"; then log "the lossless session was reset"; exit 1; fi
answered=$(sed -n 's/.*answered \([0-9]*\) pings.*/\1/p' "$tmp/serve.log" | tail -n1)
[ "$answered" = "$count" ] || { log "server answered ${answered:-?} pings, expected $count"; exit 1; }
[ "$total" -ge 1000 ] || { log "only $total faults injected: the run does not count (need >= 1000)"; exit 1; }
fi

# --- 2. kill -9 and restart -------------------------------------------------------
kill_restart() {
  local policy=$1 port
  port=$(free_port)
  start_server "$tmp/k1.log" "$bin" serve --bind "127.0.0.1:$port" --policy "$policy"
  # Nonce 0: the restarted server (a new nonce) is still the peer we dialled.
  "$bin" -o ms_initial_backoff=0.01 -o ms_max_backoff=0.2 ping --connect "v2:127.0.0.1:$port/0" \
    --policy "$policy" --verify --count 100000 --window 1 --size 256 --timeout 30 >"$tmp/kping.out" 2>&1 &
  PING_PID=$!
  sleep 1
  kill -9 "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true
  log "$policy: server killed with -9, restarting on port $port"
  sleep 0.5
  start_server "$tmp/k2.log" "$bin" serve --bind "127.0.0.1:$port" --policy "$policy"
  local rc=0
  wait "$PING_PID" || rc=$?
  PING_PID=
  cat "$tmp/kping.out"
  kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true
  [ "$rc" = 0 ] || { log "$policy ping did not survive the server's kill -9 (exit $rc)"; exit 1; }
  verified_ok 100000 "$tmp/kping.out" "$policy after kill -9" || exit 1
}
kill_restart lossless
grep -qE "sessions: 0 resets, [1-9][0-9]* remote resets" "$tmp/kping.out" \
  || { log "lossless: expected a remote reset and no plain reset"; exit 1; }
kill_restart lossy
grep -qE "sessions: [1-9][0-9]* resets, 0 remote resets" "$tmp/kping.out" \
  || { log "lossy: expected a reset and no remote reset"; exit 1; }
log "fault runs ok"
