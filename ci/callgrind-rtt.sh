#!/usr/bin/env bash
# User-space instructions per msgr round trip, counted by callgrind: repeatable on a
# noisy machine where timings are not.
#
# A `msgr bench server` and two `msgr bench client --count N` runs (N1, then N2
# messages at depth 1) all run under callgrind. The server's counters are dumped before
# and after each client run; per round trip = (second run − first run) / (N2 − N1) on
# each side, so start-up, connection set-up and teardown cancel out.
#
# Usage: ci/callgrind-rtt.sh [MSGR_BINARY] [SIZE]   (default target/release/msgr, 4k)
# Environment: N1 (default 1000), N2 (default 6000), PORT (default 6870).
set -euo pipefail
cd "$(dirname "$0")/.."
. ci/lib.sh

bin=${1:-target/release/msgr}
size=${2:-4k}
n1=${N1:-1000}
n2=${N2:-6000}
port=${PORT:-6870}
apt_install valgrind
[ -x "$bin" ] || { log "no msgr binary at $bin: cargo build --release first"; exit 1; }

work=$(mktemp -d)
srv_pid=
cleanup() {
  [ -n "$srv_pid" ] && kill "$srv_pid" 2>/dev/null && wait "$srv_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

# Callgrind's "totals:" line of one output file.
total() { awk '/^totals:/ { print $2 }' "$1"; }

# Writes a server dump and prints its totals (instructions since the previous dump).
server_dump() {
  local before
  before=$(ls "$work"/srv.* 2>/dev/null | wc -l)
  callgrind_control -d "$srv_pid" >/dev/null 2>&1
  for _ in $(seq 100); do
    local now
    now=$(ls "$work"/srv.* 2>/dev/null | wc -l)
    if [ "$now" -gt "$before" ]; then
      total "$(ls -t "$work"/srv.* | head -1)"
      return
    fi
    sleep 0.1
  done
  log "callgrind did not write a dump for the server"; exit 1
}

client_run() {
  local n=$1 out="$work/cli.$1"
  valgrind -q --tool=callgrind --callgrind-out-file="$out" "$bin" bench client \
    --connect "127.0.0.1:$port" --size "$size" --depth 1 --count "$n" --warmup 0 --baseline none \
    >"$work/cli.$n.log" 2>&1 || { cat "$work/cli.$n.log"; exit 1; }
  total "$out"
}

valgrind -q --tool=callgrind --callgrind-out-file="$work/srv.%n" "$bin" bench server \
  --bind "127.0.0.1:$port" >"$work/srv.log" 2>&1 &
srv_pid=$!
for _ in $(seq 300); do
  grep -q "listening" "$work/srv.log" && break
  sleep 0.1
done
grep -q "listening" "$work/srv.log" || { cat "$work/srv.log"; log "bench server did not start"; exit 1; }

server_dump >/dev/null
c1=$(client_run "$n1")
s1=$(server_dump)
c2=$(client_run "$n2")
s2=$(server_dump)

python3 - "$size" "$n1" "$n2" "$c1" "$c2" "$s1" "$s2" <<'EOF'
import sys
size, n1, n2, c1, c2, s1, s2 = sys.argv[1], *map(int, sys.argv[2:])
client = (c2 - c1) / (n2 - n1)
server = (s2 - s1) / (n2 - n1)
print(f"callgrind, {size} round trip at depth 1 ({n2 - n1} round trips = run of {n2} minus run of {n1}):")
print(f"  client {client:,.0f} + server {server:,.0f} = {client + server:,.0f} user-space instructions per round trip")
EOF
