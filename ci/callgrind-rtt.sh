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
callgrind_server "$bin" "$port"

client_run() {
  local n=$1 out="$CG_WORK/cli.$1"
  valgrind -q --tool=callgrind --callgrind-out-file="$out" "$bin" bench client \
    --connect "127.0.0.1:$port" --size "$size" --depth 1 --count "$n" --warmup 0 --baseline none \
    >"$CG_WORK/cli.$n.log" 2>&1 || { cat "$CG_WORK/cli.$n.log"; exit 1; }
  callgrind_total "$out"
}

callgrind_server_dump >/dev/null
c1=$(client_run "$n1")
s1=$(callgrind_server_dump)
c2=$(client_run "$n2")
s2=$(callgrind_server_dump)

python3 - "$size" "$n1" "$n2" "$c1" "$c2" "$s1" "$s2" <<'EOF'
import sys
size, n1, n2, c1, c2, s1, s2 = sys.argv[1], *map(int, sys.argv[2:])
client = (c2 - c1) / (n2 - n1)
server = (s2 - s1) / (n2 - n1)
print(f"callgrind, {size} round trip at depth 1 ({n2 - n1} round trips = run of {n2} minus run of {n1}):")
print(f"  client {client:,.0f} + server {server:,.0f} = {client + server:,.0f} user-space instructions per round trip")
EOF
