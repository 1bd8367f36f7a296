#!/usr/bin/env bash
# User-space instructions per message of a `msgr bench server` under a pipelined load,
# counted by callgrind: the server runs under valgrind, the client natively (so that
# the pipeline stays deep). Repeatable where the timed server CPU is not.
#
# A first client run of 2,000 messages per job warms the server up; its counters are
# then zeroed, a second run of COUNT messages per job is made, and the server's total
# is divided by the messages it echoed.
#
# Usage: ci/callgrind-server.sh [MSGR_BINARY] [SIZE] [DEPTH] [JOBS] [COUNT]
#        (defaults: target/release/msgr 64 128 1 200000)
# Environment: PORT (default 6871).
set -euo pipefail
cd "$(dirname "$0")/.."
. ci/lib.sh

bin=${1:-target/release/msgr}
size=${2:-64}
depth=${3:-128}
jobs=${4:-1}
count=${5:-200000}
port=${PORT:-6871}
apt_install valgrind
[ -x "$bin" ] || { log "no msgr binary at $bin: cargo build --release first"; exit 1; }

work=$(mktemp -d)
srv_pid=
cleanup() {
  [ -n "$srv_pid" ] && kill "$srv_pid" 2>/dev/null && wait "$srv_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

valgrind -q --tool=callgrind --callgrind-out-file="$work/srv.%n" "$bin" bench server \
  --bind "127.0.0.1:$port" >"$work/srv.log" 2>&1 &
srv_pid=$!
for _ in $(seq 300); do
  grep -q "listening" "$work/srv.log" && break
  sleep 0.1
done
grep -q "listening" "$work/srv.log" || { cat "$work/srv.log"; log "bench server did not start"; exit 1; }

client() {
  "$bin" bench client --connect "127.0.0.1:$port" --size "$size" --depth "$depth" --jobs "$jobs" \
    --count "$1" --warmup 0 --baseline none >"$work/cli.log" 2>&1 || { cat "$work/cli.log"; exit 1; }
}

client 2000
callgrind_control -z "$srv_pid" >/dev/null
client "$count"
callgrind_control -d "$srv_pid" >/dev/null
# The dump is the one file that has totals while the server still runs.
dump=
for _ in $(seq 100); do
  dump=$(grep -l '^totals:' "$work"/srv.* 2>/dev/null | head -1 || true)
  [ -n "$dump" ] && break
  sleep 0.1
done
[ -n "$dump" ] || { log "callgrind did not write a dump for the server"; exit 1; }
total=$(awk '/^totals:/ { print $2 }' "$dump")
python3 - "$size" "$depth" "$jobs" "$count" "$total" <<'EOF'
import sys
size, depth, jobs, count, total = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
msgs = count * jobs
print(f"callgrind server, {size} x depth {depth} x {jobs} job(s), {msgs} messages echoed after warm-up:")
print(f"  {total / msgs:,.0f} user-space instructions per message")
EOF
