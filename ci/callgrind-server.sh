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
callgrind_server "$bin" "$port"

client() {
  "$bin" bench client --connect "127.0.0.1:$port" --size "$size" --depth "$depth" --jobs "$jobs" \
    --count "$1" --warmup 0 --baseline none >"$CG_WORK/cli.log" 2>&1 || { cat "$CG_WORK/cli.log"; exit 1; }
}

client 2000
callgrind_control -z "$CG_PID" >/dev/null
client "$count"
total=$(callgrind_total "$(callgrind_server_dump)")
python3 - "$size" "$depth" "$jobs" "$count" "$total" <<'EOF'
import sys
size, depth, jobs, count, total = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
msgs = count * jobs
print(f"callgrind server, {size} x depth {depth} x {jobs} job(s), {msgs} messages echoed after warm-up:")
print(f"  {total / msgs:,.0f} user-space instructions per message")
EOF
