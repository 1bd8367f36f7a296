#!/usr/bin/env bash
# Starts `msgr serve` and runs `msgr ping` against it from a second process, for 64 B and
# 4 KiB payloads. Usage: ci/ping-pair.sh [MSGR_BINARY] [COUNT]
set -euo pipefail
cd "$(dirname "$0")/.."
. ci/lib.sh
bin=${1:-target/release/msgr}
count=${2:-2000}
tmp=$(mktemp -d)
trap 'kill "${SERVER_PID:-}" 2>/dev/null || true; rm -rf "$tmp"' EXIT
start_server "$tmp/serve.log" "$bin" serve --bind 127.0.0.1:0
log "server at $SERVER_ADDR"
for size in 64 4096; do
  "$bin" ping --connect "$SERVER_ADDR" --count "$count" --size "$size"
done
# Every reply numbered and checksummed, on a lossless connection.
"$bin" ping --connect "$SERVER_ADDR" --count "$count" --size 4096 --policy lossless --verify
# A ping to a port nobody listens on must fail with a non-zero exit code.
if "$bin" ping --connect "127.0.0.1:$(free_port)" --count 1 --timeout 5 2>"$tmp/refused.err"; then
  log "ping to a closed port succeeded?"; exit 1
fi
grep -q "refused" "$tmp/refused.err" || { cat "$tmp/refused.err"; log "expected a 'refused' error"; exit 1; }
kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true
log "ping pair ok"
